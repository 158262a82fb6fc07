"""Production-log reader: time-ordered streaming, positions and resume, the rank/worker split, bad records."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from framework.data.logs.reader import (
    BadRecordBudgetExceeded,
    LogReader,
    LogRowsDataset,
    global_batches,
    rank_slices,
)
from framework.data.logs.schema import LogSchema, day_parts, day_start_ts, list_days
from framework.data.logs.writer import write_day

SCHEMA = LogSchema()
DAY = dt.date(2026, 3, 1)


def make_rows(n: int, seed: int = 0, day: dt.date = DAY) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 86_400, n)) + day_start_ts(day)
    click = rng.random(n) < 0.3
    cols = {
        "user_id": rng.integers(1, 1 << 40, n),
        "item_id": rng.integers(1, 1 << 40, n),
        "ts": ts,
        "item_created_ts": ts - rng.integers(0, 3600, n),
        "skip": (~click).astype(np.int8),
    }
    for label in SCHEMA.positives:
        cols[label] = (click & (rng.random(n) < 0.5)).astype(np.int8)
    return cols


def write_parts(root: Path, rows: dict[str, np.ndarray], sizes: list[int], row_group_rows: int = 40) -> None:
    edges = np.cumsum([0, *sizes])
    assert edges[-1] == rows["ts"].size
    parts = [{c: v[a:b] for c, v in rows.items()} for a, b in zip(edges[:-1], edges[1:], strict=True)]
    write_day(root, DAY, parts, SCHEMA, row_group_rows=row_group_rows)


@pytest.fixture
def day_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rows = make_rows(500)
    write_parts(tmp_path, rows, [130, 0, 250, 120])  # an empty part, row groups of 40 not aligned to parts
    return tmp_path, rows


def read_all(reader: LogReader, start: int = 0, stop: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    chunks = list(reader.chunks(start, stop))
    empty = np.empty(0, np.int64)
    cols = {c: np.concatenate([empty, *(ch.columns[c] for ch in chunks)]) for c in SCHEMA.columns}
    return cols, np.concatenate([empty, *(ch.positions for ch in chunks)])


def test_layout_listing_and_round_trip(day_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, rows = day_root
    assert list_days(str(root)) == [DAY]
    assert [Path(p).name for p in day_parts(str(root), DAY)] == [f"part-0000{i}.parquet" for i in range(4)]
    reader = LogReader(str(root), DAY, SCHEMA, chunk_rows=17)
    cols, positions = read_all(reader)
    assert reader.num_rows == 500
    np.testing.assert_array_equal(positions, np.arange(500))
    for c in SCHEMA.columns:
        np.testing.assert_array_equal(cols[c], rows[c], err_msg=c)
    assert max(len(ch) for ch in reader.chunks()) <= 17
    with pytest.raises(FileNotFoundError, match="day=2026-03-02"):
        _ = LogReader(str(root), DAY + dt.timedelta(days=1), SCHEMA).num_rows


def test_uri_root(day_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, rows = day_root
    cols, _ = read_all(LogReader(f"file://{root}", DAY, SCHEMA))
    np.testing.assert_array_equal(cols["item_id"], rows["item_id"])


@pytest.mark.parametrize("start", [0, 1, 39, 40, 129, 130, 131, 380, 499, 500])
def test_resume_from_any_position(day_root: tuple[Path, dict[str, np.ndarray]], start: int) -> None:
    root, rows = day_root
    cols, positions = read_all(LogReader(str(root), DAY, SCHEMA, chunk_rows=33), start)
    np.testing.assert_array_equal(positions, np.arange(start, 500))
    np.testing.assert_array_equal(cols["user_id"], rows["user_id"][start:])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_slices_partition_every_batch(world_size: int) -> None:
    seen = np.zeros(1003, dtype=int)
    for rank in range(world_size):
        for g, lo, hi in rank_slices(0, 1003, 100, rank, world_size):
            assert g * 100 <= lo <= hi <= min((g + 1) * 100, 1003)
            seen[lo:hi] += 1
    assert (seen == 1).all()
    with pytest.raises(ValueError, match="multiple of the global batch"):
        next(rank_slices(50, 1003, 100, 0, 2))


def test_global_batches_recut_chunks(day_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = day_root
    reader = LogReader(str(root), DAY, SCHEMA, chunk_rows=37)
    got = list(global_batches(reader.chunks(128), 128, 64))
    assert [g for g, _, _ in got] == list(range(2, 8))  # 500 rows: batches 2..6 full, 7 holds the last 52
    for g, cols, positions in got:
        np.testing.assert_array_equal(positions, np.arange(g * 64, min((g + 1) * 64, 500)))
        assert cols["ts"].size == positions.size
    with pytest.raises(ValueError, match="multiple of the global batch"):
        next(global_batches(reader.chunks(100), 100, 64))


def _loader_rows(root: Path, rank: int, world: int, workers: int, start: int = 0) -> tuple[list[int], np.ndarray]:
    ds = LogRowsDataset(str(root), DAY, SCHEMA, global_batch=48, rank=rank, world_size=world, start=start)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    batches = list(loader)
    order = [int(g) for g, _, _ in batches]
    positions = np.concatenate([np.asarray(p) for _, _, p in batches]) if batches else np.empty(0, np.int64)
    for _, cols, p in batches:
        assert np.asarray(cols["user_id"]).shape == np.asarray(p).shape
    return order, positions


def test_ranks_and_worker_processes_see_disjoint_complete_rows(day_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = day_root
    everything = []
    for rank in range(2):
        order, positions = _loader_rows(root, rank, 2, workers=2)  # two real worker processes per rank
        assert order == sorted(order) == list(range(11))  # DataLoader round-robin keeps the batch order
        everything.append(positions)
    allpos = np.concatenate(everything)
    np.testing.assert_array_equal(np.sort(allpos), np.arange(500))  # complete and disjoint


def test_resume_mid_day_at_another_world_size(day_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = day_root
    # W=2 trains batches 0..4 (positions 0..239), then the job resumes at W=1 from position 240.
    first = [p[p < 240] for p in (_loader_rows(root, r, 2, workers=0)[1] for r in range(2))]
    _, rest = _loader_rows(root, 0, 1, workers=1, start=240)
    np.testing.assert_array_equal(np.sort(np.concatenate([*first, rest])), np.arange(500))


def test_reader_is_deterministic(day_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = day_root
    a, _ = read_all(LogReader(str(root), DAY, SCHEMA, chunk_rows=7))
    b, _ = read_all(LogReader(str(root), DAY, SCHEMA, chunk_rows=1000))
    for c in SCHEMA.columns:
        np.testing.assert_array_equal(a[c], b[c])


# ------------------------------------------------------------------------------------------------ bad records


def _replace_part(root: Path, index: int, table: pa.Table) -> Path:
    path = root / f"day={DAY.isoformat()}" / f"part-{index:05d}.parquet"
    pq.write_table(table, path, row_group_size=40)
    return path


def test_truncated_file_fails_naming_it_and_counts_under_a_budget(
    day_root: tuple[Path, dict[str, np.ndarray]],
) -> None:
    root, rows = day_root
    path = root / f"day={DAY.isoformat()}" / "part-00002.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a crashed copy: no footer
    with pytest.raises(BadRecordBudgetExceeded, match=r"unreadable_file.*part-00002\.parquet"):
        _ = LogReader(str(root), DAY, SCHEMA).num_rows
    reader = LogReader(str(root), DAY, SCHEMA, max_bad_records=1)
    cols, positions = read_all(reader)
    assert reader.bad.counts == {"unreadable_file": 1}
    assert reader.num_rows == 250  # its rows are unknown: they get no positions
    keep = np.r_[0:130, 380:500]
    np.testing.assert_array_equal(cols["item_id"], rows["item_id"][keep])
    np.testing.assert_array_equal(positions, np.arange(250))


def test_null_id_row_is_counted_with_its_place(day_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, rows = day_root
    part = {c: v[380:500] for c, v in rows.items()}
    table = pa.table({c: pa.array(v) for c, v in part.items()})
    user = table.column("user_id").to_pylist()
    user[45] = None  # row 5 of row group 1 of the last part
    table = table.set_column(0, "user_id", pa.array(user, type=pa.int64()))
    _replace_part(root, 3, table)
    with pytest.raises(BadRecordBudgetExceeded, match=r"null_user_id at .*part-00003\.parquet row group 1 row 5"):
        read_all(LogReader(str(root), DAY, SCHEMA))
    reader = LogReader(str(root), DAY, SCHEMA, max_bad_records=1)
    cols, positions = read_all(reader)
    assert reader.bad.counts == {"null_user_id": 1}
    assert 380 + 45 not in positions and positions.size == 499
    np.testing.assert_array_equal(cols["user_id"], np.delete(rows["user_id"], 425))


def test_unsorted_and_out_of_day_rows_and_bad_schema(day_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, rows = day_root
    part = {c: v[380:500].copy() for c, v in rows.items()}
    part["ts"][10] = part["ts"][0] - 1  # earlier than rows before it
    part["item_created_ts"][10] = part["ts"][10] - 100
    part["ts"][20] += 86_400 * 3  # another day (also makes nothing after it "unsorted": it is dropped first)
    part["like"][30] = 2
    _replace_part(root, 3, pa.table(part))
    reader = LogReader(str(root), DAY, SCHEMA, max_bad_records=10)
    _, positions = read_all(reader)
    assert reader.bad.counts == {"unsorted_ts": 1, "ts_outside_day": 1, "label_not_0_1": 1}
    assert positions.size == 497
    # A file without a label column is one bad record naming the column.
    del part["share"]
    _replace_part(root, 3, pa.table({c: v for c, v in part.items()}))
    with pytest.raises(BadRecordBudgetExceeded, match="missing column 'share'"):
        _ = LogReader(str(root), DAY, SCHEMA).num_rows


def test_resumed_read_still_checks_time_order_against_rows_before(
    day_root: tuple[Path, dict[str, np.ndarray]],
) -> None:
    root, rows = day_root
    part = {c: v[380:500].copy() for c, v in rows.items()}
    part["ts"][0] = rows["ts"][379] - 5  # first row of the last part is earlier than the last of the part before
    _replace_part(root, 3, pa.table(part))
    with pytest.raises(BadRecordBudgetExceeded, match="unsorted_ts"):
        read_all(LogReader(str(root), DAY, SCHEMA), start=380)


# ------------------------------------------------------------------------------------------------ webdataset


@pytest.fixture
def tar_root(day_root: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    from framework.data.logs.convert import to_webdataset

    root, rows = day_root
    assert to_webdataset(str(root), tmp_path / "wds") == [DAY]
    return tmp_path / "wds", rows


def test_webdataset_copy_reads_like_parquet(tar_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, rows = tar_root
    assert [Path(p).name for p in day_parts(str(root), DAY, "tar")] == [f"part-0000{i}.tar" for i in range(4)]
    reader = LogReader(str(root), DAY, SCHEMA, chunk_rows=23, fmt="webdataset")
    cols, positions = read_all(reader)
    assert reader.num_rows == 500
    np.testing.assert_array_equal(positions, np.arange(500))
    for c in SCHEMA.columns:
        np.testing.assert_array_equal(cols[c], rows[c], err_msg=c)
    cols, positions = read_all(LogReader(str(root), DAY, SCHEMA, fmt="webdataset"), start=131)  # seek
    np.testing.assert_array_equal(cols["item_id"], rows["item_id"][131:])


def test_truncated_tar_is_a_bad_file(tar_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = tar_root
    path = root / f"day={DAY.isoformat()}" / "part-00002.tar"
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(BadRecordBudgetExceeded, match=r"unreadable_file.*part-00002\.tar"):
        _ = LogReader(str(root), DAY, SCHEMA, fmt="webdataset").num_rows
    reader = LogReader(str(root), DAY, SCHEMA, fmt="webdataset", max_bad_records=1)
    assert reader.num_rows == 250
