"""`scalefirst daily` end to end (torchrun, 2 gloo ranks, sharded growing tables) on 3 generated days.

An uninterrupted catch-up is the reference; runs killed (SIGKILL) mid-training and mid-commit, then run again,
must commit every day exactly once with the reference's metrics (bitwise: the job is deterministic on CPU), and a
run killed at 2 ranks mid-day and finished at 1 rank must still train every row of the day exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from framework.jobs.lock import JobLock

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
SMALL = [
    "logs.generate.days=3", "logs.generate.num_users=400", "logs.generate.events_per_day=3000",
    "logs.generate.new_items_per_day=80", "train.global_batch_size=512", "train.eval_examples=1500",
    "train.checkpoint_every=2", "train.window_examples=300", "history.chunk_rows=700", "model.embedding_dim=16",
    "train.progress=false",
]  # fmt: skip


def daily(logs: Path, job: Path, *extra: str, nproc: int = 2, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("SCALEFIRST_FAULT", None)
    if fault:
        env["SCALEFIRST_FAULT"] = fault
    cmd = [sys.executable, "-m", "launch.cli", "daily", "--config", "configs/daily/hybrid.yaml", "--nproc", str(nproc),
           *extra, f"logs.root={logs}", f"train.run_dir={job}", *SMALL]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def history(job: Path) -> list[dict]:
    return [json.loads(line) for line in (job / "history.jsonl").read_text().splitlines()]


def comparable(h: list[dict]) -> list[dict]:
    """What must not depend on interruptions: rows, ids, params, every evaluation number."""
    return [{k: m[k] for k in ("day", "ids", "params", "eval")} | {"rows": m["train"]["rows"]} for m in h]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("daily")
    proc = daily(root / "logs", root / "ref", "--catch-up")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "holds no log day: generating 3 synthetic days" in proc.stdout
    return {"root": root, "logs": root / "logs", "history": history(root / "ref"), "job": root / "ref"}


def test_catch_up_trains_each_day_once_with_growing_tables(reference: dict) -> None:
    h = reference["history"]
    assert [m["day"] for m in h] == DAYS
    assert all(m["train"]["exactly_once"] and m["train"]["rows_trained"] == 3000 for m in h)
    assert [m["warm_start"] for m in h] == [None, DAYS[0], DAYS[1]]
    items = [m["ids"]["item"]["rows"] for m in h]
    assert items[0] < items[1] < items[2]  # new items every day: the ICR side grows
    assert all(m["world_size"] == 2 for m in h)
    assert h[0]["eval"]["day"] == DAYS[1] and h[1]["eval"]["day"] == DAYS[2] and h[2]["eval"] is None
    ev = h[0]["eval"]
    assert ev["rows"] == 1500 and 0.4 < ev["tasks"]["click"]["auc"] < 1.0
    assert sum(s["rows"] for s in ev["segments"].values()) == 1500 and len(ev["windows"]) == 6
    assert set(ev["segments"]["0"]["auc"]) == set(ev["tasks"])
    for d in DAYS:
        day = reference["job"] / "days" / d
        assert (day / "state.npz").is_file() and (day / "vocab.item.npy").is_file()
        assert list((day / "checkpoints").glob("step_*/.metadata"))
    assert not (reference["job"] / "work").exists() or not any((reference["job"] / "work").iterdir())


def test_rerun_of_committed_days_does_nothing(reference: dict) -> None:
    before = (reference["job"] / "history.jsonl").read_text()
    proc = daily(reference["logs"], reference["job"], "--catch-up")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("is already committed") == 3 and "training" not in proc.stdout
    assert (reference["job"] / "history.jsonl").read_text() == before


def test_a_day_needs_the_previous_one_committed(reference: dict, tmp_path: Path) -> None:
    proc = daily(reference["logs"], tmp_path / "job", "--date", DAYS[2])
    assert proc.returncode == 2
    assert f"day {DAYS[2]} trains from day {DAYS[1]}, which is not committed" in proc.stderr
    assert "--catch-up" in proc.stderr and "Traceback" not in proc.stderr


def test_lock_refuses_a_concurrent_run(reference: dict, tmp_path: Path) -> None:
    with JobLock(tmp_path / "job"):
        proc = daily(reference["logs"], tmp_path / "job", "--catch-up")
    assert proc.returncode == 3 and f"locked by pid {os.getpid()}" in proc.stderr


@pytest.mark.parametrize("fault", ["kill_after_step=2", f"kill_in_commit={DAYS[1]}"])
def test_killed_run_completes_each_day_exactly_once(reference: dict, tmp_path: Path, fault: str) -> None:
    job = tmp_path / "job"
    killed = daily(reference["logs"], job, "--catch-up", fault=fault)
    assert killed.returncode != 0
    committed = sorted(p.name for p in (job / "days").glob("*") if not p.name.endswith(".partial"))
    assert committed == ([] if fault.startswith("kill_after") else [DAYS[0]])
    if fault.startswith("kill_in_commit"):
        assert (job / "days" / f"{DAYS[1]}.partial" / "metrics.json").is_file()  # written, never renamed
    again = daily(reference["logs"], job, "--catch-up")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    h = history(job)
    assert comparable(h) == comparable(reference["history"])
    assert not list((job / "days").glob("*.partial"))


def test_killed_at_two_ranks_finished_at_one(reference: dict, tmp_path: Path) -> None:
    job = tmp_path / "job"
    shutil.copytree(reference["logs"], tmp_path / "logs")
    killed = daily(tmp_path / "logs", job, "--catch-up", fault="kill_after_step=4")  # day 1, mid-day
    assert killed.returncode != 0 and list((job / "work" / DAYS[0] / "checkpoints").glob("step_00000004"))
    again = daily(tmp_path / "logs", job, "--catch-up", nproc=1)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed mid-day at row 2048" in again.stdout + again.stderr
    h = history(job)
    assert all(m["train"]["exactly_once"] for m in h) and [m["world_size"] for m in h] == [1, 1, 1]
    for got, ref in zip(h, reference["history"], strict=True):
        if ref["eval"]:
            assert got["eval"]["tasks"]["click"]["nce"] == pytest.approx(ref["eval"]["tasks"]["click"]["nce"], abs=2e-3)


def test_uc_clustering_replaces_users_by_their_clusters(reference: dict, tmp_path: Path) -> None:
    job = tmp_path / "job"
    cmd = [sys.executable, "-m", "launch.cli", "daily", "--config", "configs/daily/ucr.yaml", "--nproc", "2",
           "--catch-up", f"logs.root={reference['logs']}", f"train.run_dir={job}", *SMALL,
           "clustering.max_cluster_size=25", "clustering.max_remap_ratio=0.2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    h = history(job)
    assert h[0]["ids"]["user"]["rows"] == 1  # day 1: no cluster exists yet, every user is row 0
    first, second = h[0]["clustering"], h[1]["clustering"]
    assert first["new_users"] == first["users"] > 0 and first["largest"] <= 25
    assert second["remapped"] <= 0.2 * second["previously_clustered"] and second["largest"] <= 25
    # Day 2's user table holds the clusters made after day 1 (+ row 0), far fewer rows than users.
    assert h[1]["ids"]["user"]["rows"] <= first["clusters"] + 1 < first["users"]
    assert (job / "days" / DAYS[1] / "clusters.npz").is_file()


def test_webdataset_copy_of_the_logs_trains_identically(reference: dict, tmp_path: Path) -> None:
    conv = subprocess.run([sys.executable, "-m", "launch.cli", "convert-logs", "--root", str(reference["logs"]),
                           "--out", str(tmp_path / "wds"), "--to", "webdataset"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert conv.returncode == 0 and "3 day(s)" in conv.stdout, conv.stderr
    proc = daily(tmp_path / "wds", tmp_path / "job", "--catch-up", "logs.format=webdataset")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert comparable(history(tmp_path / "job")) == comparable(reference["history"])
