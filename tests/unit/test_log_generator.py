"""The synthetic production world: deterministic, valid logs, a growing inventory over a fixed population, drift."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pytest

from framework.data.logs.generator import SyntheticLogWorld, WorldConfig, generate_logs
from framework.data.logs.reader import LogReader
from framework.data.logs.schema import LogSchema, list_days

SCHEMA = LogSchema()
CFG = WorldConfig(num_users=1500, events_per_day=12_000, new_items_per_day=150, parts_per_day=3, row_group_rows=2048)


def read_day(root: Path, day: dt.date) -> dict[str, np.ndarray]:
    chunks = list(LogReader(str(root), day, SCHEMA).chunks())  # validates: the budget is 0 bad records
    return {c: np.concatenate([ch.columns[c] for ch in chunks]) for c in SCHEMA.columns}


@pytest.fixture(scope="module")
def world_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    generate_logs(root, 8, CFG)
    return root


def test_days_are_valid_time_sorted_logs(world_root: Path) -> None:
    days = list_days(str(world_root))
    assert days == [CFG.start_day + dt.timedelta(days=d) for d in range(8)]
    for day in days[:2]:
        rows = read_day(world_root, day)
        assert rows["ts"].size == CFG.events_per_day
        assert (np.diff(rows["ts"]) >= 0).all() and (rows["item_created_ts"] <= rows["ts"]).all()
        assert (rows["skip"] == 1 - rows["click"]).all()  # 1 negative type: no click
        for label in ("like", "share", "follow", "complete"):
            assert (rows[label] <= rows["click"]).all()  # positive types after a click
        rates = {label: rows[label].mean() for label in SCHEMA.labels}
        assert 0.2 < rates["click"] < 0.6 and 0.005 < rates["follow"] < rates["like"] < rates["click"]


def test_deterministic_and_independent_of_what_is_on_disk(world_root: Path, tmp_path: Path) -> None:
    # Regenerate with day 3 removed: the rewritten day is byte-for-byte the same rows, the other days untouched.
    copy = tmp_path / "copy"
    shutil.copytree(world_root, copy)
    day3 = CFG.start_day + dt.timedelta(days=3)
    shutil.rmtree(copy / f"day={day3.isoformat()}")
    generate_logs(copy, 8, CFG)
    a, b = read_day(world_root, day3), read_day(copy, day3)
    for c in SCHEMA.columns:
        np.testing.assert_array_equal(a[c], b[c], err_msg=c)
    generate_logs(tmp_path / "seed1", 1, WorldConfig(**{**_fields(CFG), "seed": 1}))
    other = read_day(tmp_path / "seed1", CFG.start_day)
    assert not np.array_equal(other["user_id"], read_day(world_root, CFG.start_day)["user_id"])


def _fields(cfg: WorldConfig) -> dict:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}


def test_inventory_grows_linearly_over_a_fixed_population(world_root: Path) -> None:
    items_seen: set[int] = set()
    users_seen: set[int] = set()
    item_counts, user_counts = [], []
    for day in list_days(str(world_root)):
        rows = read_day(world_root, day)
        items_seen |= set(rows["item_id"].tolist())
        users_seen |= set(rows["user_id"].tolist())
        item_counts.append(len(items_seen))
        user_counts.append(len(users_seen))
    new_items = np.diff(item_counts)[2:]  # after the back catalogue has been seen
    assert (new_items > 0.5 * CFG.new_items_per_day).all() and (new_items < 1.5 * CFG.new_items_per_day).all()
    assert user_counts[-1] <= CFG.num_users and user_counts[-1] / user_counts[3] < 1.1  # saturates
    assert item_counts[-1] - item_counts[3] > 3.5 * CFG.new_items_per_day  # ~1 day of new items per day


def test_activeness_and_popularity_are_heavy_tailed(world_root: Path) -> None:
    rows = read_day(world_root, CFG.start_day + dt.timedelta(days=5))
    for col in ("user_id", "item_id"):
        counts = np.sort(np.unique(rows[col], return_counts=True)[1])[::-1]
        top = counts[: max(1, counts.size // 10)].sum() / counts.sum()
        assert top > 0.3, f"top 10% of {col} hold only {top:.2f} of the events"


def test_user_tastes_drift() -> None:
    world = SyntheticLogWorld(CFG)
    u0 = world.user_factors.copy()
    corr = []
    for _ in range(10):
        world.advance()
        corr.append(np.corrcoef(u0.ravel(), world.user_factors.ravel())[0, 1])
    assert corr[0] == pytest.approx(CFG.drift_rho, abs=0.02)
    assert corr[-1] == pytest.approx(CFG.drift_rho**10, abs=0.05) and corr[-1] < corr[0]
    frozen = SyntheticLogWorld(WorldConfig(**{**_fields(CFG), "drift_rho": 1.0}))
    before = frozen.user_factors.copy()
    frozen.advance()
    np.testing.assert_array_equal(before, frozen.user_factors)


def test_gen_logs_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from launch.cli import main

    argv = ["gen-logs", "--days", "2", "--out", str(tmp_path), "--num-users", "300", "--events-per-day", "3000",
            "--new-items-per-day", "40", "--start-day", "2026-05-30", "--seed", "3"]  # fmt: skip
    assert main(argv) == 0
    assert list_days(str(tmp_path)) == [dt.date(2026, 5, 30), dt.date(2026, 5, 31)]
    assert read_day(tmp_path, dt.date(2026, 5, 31))["ts"].size == 3000
    assert "2 days (2026-05-30 .. 2026-05-31)" in capsys.readouterr().out
