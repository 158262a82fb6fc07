"""Featurized days: the raw rows plus their history lists, as the daily trainer streams them.

:func:`featurize_logs` runs the history featurizer (:mod:`framework.data.logs.history`) over one raw day and
writes ``<out>/day=YYYY-MM-DD/part-NNNNN.parquet`` (atomically, like raw days) with the raw columns, ``segment``
(int8) and, per channel ``ch``, four ``list<int64>`` columns: ``item_hist.ch`` / ``item_hist_ts.ch`` (the user's
last positive items and their times) and ``user_hist.ch`` / ``user_hist_ts.ch`` (the item's sampled positive users).
The stage is restartable by construction: it is a pure function of (state before the day, raw day, config), so a
crashed run is simply run again from the day's start; the state after the day is returned, for the caller to commit.

:class:`FeatureReader` reads a featurized day by position like :class:`~framework.data.logs.reader.LogReader`
(seeks by row-group metadata; the files are our own, so no row is bad), list columns as (offsets, values) arrays.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from framework.data.logs.history import HistoryState, Lists, featurize_day
from framework.data.logs.reader import LogReader
from framework.data.logs.schema import LogSchema, day_parts
from framework.data.logs.writer import write_day

LIST_FEATURES = ("item_hist", "user_hist")


def list_columns(channels: tuple[str, ...]) -> list[str]:
    return [f"{f}{suffix}.{ch}" for ch in channels for f in LIST_FEATURES for suffix in ("", "_ts")]


def _list_array(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=pa.int64()))


def featurize_logs(
    log_root: str,
    day: dt.date,
    day_index: int,
    state: HistoryState,
    out: str | Path,
    schema: LogSchema,
    *,
    max_bad_records: int = 0,
    fmt: str = "parquet",
    rows_per_part: int = 1 << 20,
    row_group_rows: int = 65_536,
) -> dict[str, object]:
    """Featurize raw day ``day`` into ``out`` (folding it into ``state``); returns the day's reader statistics."""
    reader = LogReader(log_root, day, schema, max_bad_records=max_bad_records, fmt=fmt)
    raw = ((c.columns, c.positions) for c in reader.chunks())
    channels = state.cfg.channels

    def tables() -> Iterator[pa.Table]:
        pending: list[pa.Table] = []
        rows = 0
        for cols, _, lists in featurize_day(state, raw, day, day_index):
            arrays = {c: pa.array(np.asarray(cols[c])) for c in schema.columns}
            arrays["segment"] = pa.array(np.asarray(lists["segment"]))
            for ch in channels:
                for feature in LIST_FEATURES:
                    lst: Lists = lists[f"{feature}/{ch}"]  # type: ignore[assignment]
                    arrays[f"{feature}.{ch}"] = _list_array(lst.offsets, lst.values)
                    arrays[f"{feature}_ts.{ch}"] = _list_array(lst.offsets, lst.ts)
            pending.append(pa.table(arrays))
            rows += pending[-1].num_rows
            if rows >= rows_per_part:
                yield pa.concat_tables(pending)
                pending, rows = [], 0
        if pending or rows == 0:
            yield pa.concat_tables(pending) if pending else _empty_table(schema, channels)

    write_day(out, day, tables(), schema, row_group_rows=row_group_rows)
    return {"rows": reader.num_rows, "bad_records": reader.bad.as_dict()}


def _empty_table(schema: LogSchema, channels: tuple[str, ...]) -> pa.Table:
    arrays = {f.name: pa.array([], type=f.type) for f in schema.arrow_schema()}
    arrays["segment"] = pa.array([], type=pa.int8())
    for c in list_columns(channels):
        arrays[c] = pa.array([], type=pa.list_(pa.int64()))
    return pa.table(arrays)


@dataclass(frozen=True, eq=False)
class FeatureRows:
    """Consecutive featurized rows: flat columns, and list columns as ``(offsets [n+1], values)``."""

    columns: dict[str, np.ndarray]
    lists: dict[str, tuple[np.ndarray, np.ndarray]]
    positions: np.ndarray

    def __len__(self) -> int:
        return int(self.positions.shape[0])


class FeatureReader:
    """Reads a featurized day by position (``read(lo, hi)``), one row group at a time."""

    def __init__(self, root: str | Path, day: dt.date, schema: LogSchema, channels: tuple[str, ...]) -> None:
        self.schema, self.channels = schema, channels
        self.flat = [*schema.columns, "segment"]
        self.lists = list_columns(channels)
        self._groups: list[tuple[str, int, int, int]] = []  # (path, row group, start, rows)
        pos = 0
        for path in day_parts(str(root), day):
            meta = pq.ParquetFile(path).metadata
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                self._groups.append((path, g, pos, n))
                pos += n
        self.num_rows = pos
        self._cache: tuple[tuple[str, int], pa.Table] | None = None  # consecutive slices share a row group

    def _row_group(self, path: str, g: int) -> pa.Table:
        if self._cache is None or self._cache[0] != (path, g):
            self._cache = ((path, g), pq.ParquetFile(path).read_row_group(g))
        return self._cache[1]

    def column(self, name: str) -> np.ndarray:
        """One flat column of the whole day (e.g. ``ts``), read alone."""
        parts = {path for path, _, _, _ in self._groups}
        return np.concatenate([np.empty(0, np.int64)] + [pq.read_table(p, columns=[name]).column(name).to_numpy()
                                                         for p in sorted(parts)])  # fmt: skip

    def read(self, lo: int, hi: int) -> FeatureRows:
        """Rows at positions [lo, hi)."""
        hi = min(hi, self.num_rows)
        parts = []
        for path, g, start, n in self._groups:
            a, b = max(lo, start), min(hi, start + n)
            if a < b:
                parts.append(self._row_group(path, g).slice(a - start, b - a))
        table = pa.concat_tables(parts) if parts else _empty_table(self.schema, self.channels)
        columns = {c: table.column(c).to_numpy() for c in self.flat}
        lists = {}
        for c in self.lists:
            arr = table.column(c).combine_chunks()
            offsets = np.asarray(arr.offsets, np.int64)
            values = np.asarray(arr.values, np.int64)
            lists[c] = (offsets - offsets[0], values[offsets[0] : offsets[-1]]) if offsets.size else (
                np.zeros(1, np.int64), np.empty(0, np.int64))  # fmt: skip
        return FeatureRows(columns, lists, np.arange(lo, max(lo, hi), dtype=np.int64))
