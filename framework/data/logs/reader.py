"""Streaming reader of one day of production logs (:mod:`framework.data.logs.schema`), in time order.

It reads one Parquet row group at a time (never the whole day) and yields :class:`LogChunk` s of at most
``chunk_rows`` rows. Rows are numbered by their **position** in the day: the index among all rows of the day's
part files, in part order, as the files' metadata count them. Positions do not depend on who reads (rank, worker)
or on where reading started, so a position is a resumable cursor: ``chunks(start=p)`` seeks to row ``p`` through
the metadata (whole files and row groups are skipped unread).

Bad data is never dropped silently. Each problem is counted by kind, logged with file, row group and row offset,
and the read fails with :class:`BadRecordBudgetExceeded` once more than ``max_bad_records`` records are bad
(default 0: the first one fails). What is one record:

* a row with a null or out-of-range id/time, ``ts`` outside the day, ``item_created_ts > ts``, a label not 0/1,
  or ``ts`` earlier than a previous row's (the day must be time-sorted);
* every row of a row group that cannot be decoded;
* a file whose footer cannot be read (truncated, not Parquet) or whose schema lacks columns: one record, its
  rows (unknown) get no positions.

:func:`rank_slices` / :class:`LogRowsDataset` split the rows of a day into global batches of ``global_batch``
positions, rank ``r`` of ``W`` taking the ``r``-th of W equal slices of each, DataLoader worker ``k`` of ``K`` every
batch ``g`` with ``g % K == k``: every row of the day is seen exactly once at any (W, K), and resuming at position
``p`` (a multiple of the global batch) continues at batch ``p // global_batch`` whatever W was before.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from framework.data.errors import DataFormatError
from framework.data.logs.schema import SECONDS_PER_DAY, LogSchema, day_parts, day_start_ts, resolve_root

logger = logging.getLogger(__name__)

_MAX_LOGGED_PER_KIND = 5


class BadRecordBudgetExceeded(DataFormatError):
    """More bad records than ``data.max_bad_records`` allow; the message names the counts and the last one."""


@dataclass
class BadRecords:
    """Bad records seen so far, by kind, with where the first few of each kind were."""

    max_bad_records: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, kind: str, n: int, where: str) -> None:
        if n <= 0:
            return
        self.counts[kind] += n
        seen = self.examples.setdefault(kind, [])
        if len(seen) < _MAX_LOGGED_PER_KIND:
            seen.append(where)
            logger.warning("bad log record(s): %d x %s at %s", n, kind, where)
        if self.total > self.max_bad_records:
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
            raise BadRecordBudgetExceeded(
                f"{self.total} bad log record(s) exceed data.max_bad_records={self.max_bad_records} "
                f"({counts}); last: {n} x {kind} at {where}"
            )

    def as_dict(self) -> dict[str, object]:
        return {"total": self.total, "counts": dict(self.counts), "examples": dict(self.examples)}


@dataclass(frozen=True, eq=False)
class LogChunk:
    """Consecutive rows of one day. ``columns`` hold the good rows; ``positions`` their row positions."""

    columns: dict[str, np.ndarray]
    positions: np.ndarray
    """int64 [n] day positions of the rows in ``columns`` (ascending; gaps where bad rows were dropped)."""
    end: int
    """The position after the last row this chunk covers (good or bad): where the next chunk starts."""

    def __len__(self) -> int:
        return int(self.positions.shape[0])


@dataclass(frozen=True)
class _RowGroup:
    path: str
    index: int
    start: int  # day position of its first row
    num_rows: int
    member: tuple[int, int] | None = None  # webdataset: (byte offset, size) of the sample's Arrow IPC stream


class LogReader:
    """Streams one day of logs in time order (module docstring).

    Example::

        reader = LogReader("logs/", dt.date(2026, 1, 5), LogSchema(), max_bad_records=10)
        for chunk in reader.chunks(start=0):
            train_on(chunk.columns, chunk.positions)
        print(reader.num_rows, reader.bad.as_dict())

    Args:
        root: the log root (local path or pyarrow.fs URI).
        day: the day to read.
        schema: label and dense columns.
        max_bad_records: the bad-record budget of this reader (0: fail on the first).
        chunk_rows: rows per yielded chunk at most (a row group is sliced into chunks).
        check_day: require ``ts`` inside the day (raw logs); featurized copies keep it too.
        fmt: ``parquet`` (``part-NNNNN.parquet``) or ``webdataset`` (``part-NNNNN.tar`` written by
            :func:`framework.data.logs.convert.to_webdataset`: one sample per row group, an Arrow IPC stream
            ``<key>.arrow`` and ``<key>.json`` with its row count). Both read alike: positions, seeking, bad records.
    """

    def __init__(
        self,
        root: str,
        day: dt.date,
        schema: LogSchema,
        *,
        max_bad_records: int = 0,
        chunk_rows: int = 65_536,
        check_day: bool = True,
        fmt: str = "parquet",
    ) -> None:
        if fmt not in ("parquet", "webdataset"):
            raise ValueError(f"log format must be 'parquet' or 'webdataset', got {fmt!r}")
        self.fmt = fmt
        if chunk_rows < 1 or max_bad_records < 0:
            raise ValueError(f"chunk_rows must be >= 1 and max_bad_records >= 0, got {chunk_rows}, {max_bad_records}")
        self.root, self.day, self.schema = root, day, schema
        self.chunk_rows = chunk_rows
        self.check_day = check_day
        self.bad = BadRecords(max_bad_records)
        self._fs, _ = resolve_root(root)
        self._day_lo = day_start_ts(day)
        self._groups: list[_RowGroup] | None = None

    # ------------------------------------------------------------------------------------------------ metadata

    def _open(self, path: str) -> pq.ParquetFile | None:
        try:
            pf = pq.ParquetFile(self._fs.open_input_file(path))
        except (OSError, pa.ArrowInvalid) as e:
            self.bad.add("unreadable_file", 1, f"{path}: {e}")
            return None
        problems = self.schema.problems(pf.schema_arrow)
        if problems:
            self.bad.add("bad_schema", 1, f"{path}: {'; '.join(problems)}")
            return None
        return pf

    def _scan_tar(self, path: str) -> list[tuple[int, int, tuple[int, int]]] | None:
        """(index, rows, (offset, size)) of every sample of a webdataset part, from its headers and .json members."""
        import tarfile

        try:
            with self._fs.open_input_file(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                out = []
                for name in sorted(n for n in members if n.endswith(".arrow")):
                    key = name[: -len(".arrow")]
                    meta = json.loads(tar.extractfile(members[f"{key}.json"]).read())  # type: ignore[union-attr]
                    out.append((len(out), int(meta["rows"]), (members[name].offset_data, members[name].size)))
        except (OSError, tarfile.TarError, KeyError, ValueError) as e:
            self.bad.add("unreadable_file", 1, f"{path}: {e}")
            return None
        if out:
            problems = self.schema.problems(self._read_member(path, out[0][2]).schema)
            if problems:
                self.bad.add("bad_schema", 1, f"{path}: {'; '.join(problems)}")
                return None
        return out

    def _read_member(self, path: str, member: tuple[int, int]) -> pa.Table:
        offset, size = member
        with self._fs.open_input_file(path) as f:
            f.seek(offset)
            return pa.ipc.open_stream(f.read(size)).read_all()

    def _read_group(self, g: _RowGroup, columns: list[str], files: dict[str, pq.ParquetFile]) -> pa.Table:
        if g.member is not None:
            return self._read_member(g.path, g.member).select(columns)
        pf = files.get(g.path)
        if pf is None:
            files.clear()  # one file open at a time
            pf = files[g.path] = pq.ParquetFile(self._fs.open_input_file(g.path))
        return pf.read_row_group(g.index, columns=columns)

    def row_groups(self) -> list[_RowGroup]:
        """Every readable row group of the day with its first position (reads only footers / tar headers)."""
        if self._groups is None:
            groups, pos = [], 0
            suffix = "tar" if self.fmt == "webdataset" else "parquet"
            for path in day_parts(self.root, self.day, suffix):
                if self.fmt == "webdataset":
                    samples = self._scan_tar(path)
                    for i, n, member in samples or []:
                        groups.append(_RowGroup(path, i, pos, n, member))
                        pos += n
                    continue
                pf = self._open(path)
                if pf is None:
                    continue
                for i in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(i).num_rows
                    groups.append(_RowGroup(path, i, pos, n))
                    pos += n
            self._groups = groups
        return self._groups

    @property
    def num_rows(self) -> int:
        """Rows of the day according to the metadata of its readable files (bad rows included)."""
        groups = self.row_groups()
        return groups[-1].start + groups[-1].num_rows if groups else 0

    # ------------------------------------------------------------------------------------------------ rows

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[LogChunk]:
        """Chunks covering positions [start, stop) in order (stop None: the end of the day).

        Time order is checked from ``start`` on, against the last good row before it (read again for that).
        """
        total = self.num_rows
        stop = total if stop is None else min(stop, total)
        if start < 0 or start > stop:
            raise ValueError(f"start must be in [0, {stop}], got {start}")
        columns = list(self.schema.columns)
        last_ts = self._ts_before(start)
        open_files: dict[str, pq.ParquetFile] = {}
        for g in self.row_groups():
            lo, hi = max(start, g.start), min(stop, g.start + g.num_rows)
            if lo >= hi:
                continue
            where = f"{g.path} row group {g.index}"
            try:
                table = self._read_group(g, columns, open_files)
            except (OSError, pa.ArrowException, KeyError) as e:
                self.bad.add("unreadable_row_group", hi - lo, f"{where}: {e}")
                yield LogChunk(self._empty(columns), np.empty(0, np.int64), hi)
                continue
            for a in range(lo, hi, self.chunk_rows):
                b = min(a + self.chunk_rows, hi)
                part = table.slice(a - g.start, b - a)
                cols, positions, last_ts = self._validate(part, np.arange(a, b, dtype=np.int64), last_ts, where, g)
                yield LogChunk(cols, positions, b)

    def _ts_before(self, start: int) -> int:
        """``ts`` of the last row before ``start`` (the time-order check resumes from it); -inf-like if none."""
        if start == 0:
            return np.iinfo(np.int64).min
        for g in reversed(self.row_groups()):
            if g.start < start:
                table = self._read_group(g, ["ts"], {})
                ts = table.column("ts").slice(0, start - g.start).drop_null().to_numpy()
                if ts.size:
                    return int(ts.max())
                start = g.start
        return np.iinfo(np.int64).min

    def _empty(self, columns: list[str]) -> dict[str, np.ndarray]:
        return {c: np.empty(0, np.int64) for c in columns}

    def _validate(
        self, table: pa.Table, positions: np.ndarray, last_ts: int, where: str, g: _RowGroup
    ) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
        n = table.num_rows
        bad = np.zeros(n, dtype=bool)
        kinds: list[tuple[str, np.ndarray]] = []
        for c in self.schema.fixed_columns:
            col = table.column(c)
            if col.null_count:
                kinds.append((f"null_{c}", np.asarray(col.is_null().to_numpy(zero_copy_only=False))))
        cols: dict[str, np.ndarray] = {}
        for c in self.schema.columns:
            col = table.column(c)
            fill = 0 if c not in self.schema.dense else np.nan
            arr = col.fill_null(fill).to_numpy() if col.null_count else col.to_numpy()
            if c in self.schema.labels:
                kinds.append(("label_not_0_1", (arr != 0) & (arr != 1)))
                arr = arr.astype(np.int8, copy=False)
            elif c in self.schema.dense:
                arr = arr.astype(np.float32, copy=False)
            cols[c] = arr
        ts = cols["ts"]
        if self.check_day:
            kinds.append(("ts_outside_day", (ts < self._day_lo) | (ts >= self._day_lo + SECONDS_PER_DAY)))
        kinds.append(("item_created_after_event", cols["item_created_ts"] > ts))
        for _, mask in kinds:
            bad |= mask
        # Time order over the good rows: a row earlier than the latest good row before it is out of order.
        good_ts = np.where(bad, np.iinfo(np.int64).min, ts)
        running = np.maximum.accumulate(np.concatenate([[last_ts], good_ts]))[:-1]
        kinds.append(("unsorted_ts", ~bad & (ts < running)))
        counted = np.zeros(n, dtype=bool)
        for kind, mask in kinds:  # each bad row is counted once, under the first kind that flags it
            mine = mask & ~counted
            if mine.any():
                first = int(np.flatnonzero(mine)[0])
                self.bad.add(kind, int(mine.sum()), f"{where} row {int(positions[first]) - g.start}")
            counted |= mine
        bad = counted
        keep = ~bad
        if keep.any():
            last_ts = max(last_ts, int(ts[keep].max()))
        if not keep.all():
            cols = {c: v[keep] for c, v in cols.items()}
            positions = positions[keep]
        return cols, positions, last_ts


# ---------------------------------------------------------------------------------------------- splitting


def rank_slices(start: int, stop: int, global_batch: int, rank: int, world_size: int) -> Iterator[tuple[int, int, int]]:
    """(batch index g, lo, hi): rank ``rank``'s positions [lo, hi) of each global batch in [start, stop).

    Global batch g covers positions [g*B, (g+1)*B) (the last one shorter); each of the W ranks takes a contiguous
    1/W of it (the first ``len % W`` ranks one more row when it does not divide). ``start`` must be a batch edge.
    """
    if global_batch < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need global_batch >= 1 and 0 <= rank < world_size, got {global_batch}, {rank}, {world_size}")
    if start % global_batch and start != stop:
        raise ValueError(f"start {start} is not a multiple of the global batch {global_batch}")
    for g in range(start // global_batch, -(-stop // global_batch)):
        a, b = g * global_batch, min((g + 1) * global_batch, stop)
        size, extra = divmod(b - a, world_size)
        lo = a + rank * size + min(rank, extra)
        yield g, lo, lo + size + (1 if rank < extra else 0)


class LogRowsDataset(torch.utils.data.IterableDataset):
    """One rank's rows of a day, split over DataLoader workers (batch g goes to worker g % K).

    Yields ``(g, columns, positions)`` per global batch with this rank's good rows of it. With a DataLoader
    (``batch_size=None``, K workers), batches arrive in g order: the loader takes one item from each worker in turn.
    Every worker opens its own :class:`LogReader`; bad-record budgets are per worker.
    """

    def __init__(
        self,
        root: str,
        day: dt.date,
        schema: LogSchema,
        *,
        global_batch: int,
        rank: int,
        world_size: int,
        start: int = 0,
        max_bad_records: int = 0,
    ) -> None:
        super().__init__()
        self.args = dict(root=root, day=day, schema=schema, max_bad_records=max_bad_records)
        self.global_batch, self.rank, self.world_size, self.start = global_batch, rank, world_size, start

    def __iter__(self) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader = LogReader(**self.args)  # type: ignore[arg-type]
        # Every worker reads the day sequentially (decoding is cheap next to training) and keeps its batches.
        for g, cols, positions in global_batches(reader.chunks(self.start), self.start, self.global_batch):
            if g % workers != worker:
                continue
            (_, lo, hi), = rank_slices(g * self.global_batch, min((g + 1) * self.global_batch, reader.num_rows),
                                       self.global_batch, self.rank, self.world_size)  # fmt: skip
            mine = (positions >= lo) & (positions < hi)
            yield g, {c: v[mine] for c, v in cols.items()}, positions[mine]


def global_batches(
    chunks: Iterator[LogChunk], start: int, global_batch: int
) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray]]:
    """Re-cut a chunk stream that starts at position ``start`` (a batch edge) into global batches.

    Yields ``(g, columns, positions)`` with the good rows of positions [g*B, (g+1)*B), for every batch the
    stream covers, in order (a batch whose rows were all bad is yielded empty, so batch indices have no gaps).
    """
    if start % global_batch:
        raise ValueError(f"start {start} is not a multiple of the global batch {global_batch}")
    g, end = start // global_batch, start
    pending: list[LogChunk] = []
    for chunk in chunks:
        pending.append(chunk)
        end = chunk.end
        while end >= (g + 1) * global_batch:
            yield g, *_take(pending, (g + 1) * global_batch)
            g += 1
    if end > g * global_batch:  # the day's last, shorter batch
        yield g, *_take(pending, end)


def _take(pending: list[LogChunk], edge: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Remove and return the rows before position ``edge`` from ``pending`` (chunks in order)."""
    cols: dict[str, list[np.ndarray]] = {}
    pos: list[np.ndarray] = []
    keep: list[LogChunk] = []
    for chunk in pending:
        cut = int(np.searchsorted(chunk.positions, edge))
        pos.append(chunk.positions[:cut])
        for c, v in chunk.columns.items():
            cols.setdefault(c, []).append(v[:cut])
        if chunk.end > edge:
            keep.append(LogChunk({c: v[cut:] for c, v in chunk.columns.items()}, chunk.positions[cut:], chunk.end))
    pending[:] = keep
    return {c: np.concatenate(v) for c, v in cols.items()}, np.concatenate(pos) if pos else np.empty(0, np.int64)
