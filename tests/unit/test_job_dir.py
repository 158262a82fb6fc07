"""The daily job's lock (contention with a live process, takeover of a dead one's) and its commit protocol."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from framework.jobs.layout import JobDir
from framework.jobs.lock import JobLock, JobLocked

REPO = Path(__file__).resolve().parents[2]
D1, D2, D3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)


def hold_lock(job: Path) -> subprocess.Popen:
    """A real second process that takes the lock, says so, and sleeps."""
    code = textwrap.dedent(f"""
        import sys, time
        from framework.jobs.lock import JobLock
        JobLock({str(job)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_contention_names_the_holder(tmp_path: Path) -> None:
    proc = hold_lock(tmp_path)
    try:
        with pytest.raises(JobLocked, match=rf"locked by pid {proc.pid} on .* another run of this job"):
            JobLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    proc = hold_lock(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)  # dies holding it: the file still names it
    proc.wait()
    assert json.loads((tmp_path / "LOCK").read_text())["pid"] == proc.pid
    with caplog.at_level(logging.WARNING), JobLock(tmp_path) as lock:
        assert lock.stale_owner is not None and lock.stale_owner["pid"] == proc.pid
        assert json.loads((tmp_path / "LOCK").read_text())["pid"] == os.getpid()
    assert f"stale lock from pid {proc.pid}" in caplog.text
    # Released cleanly: the next run finds no owner and nothing stale.
    with JobLock(tmp_path) as lock:
        assert lock.stale_owner is None


def test_commit_is_atomic_idempotent_and_rebuilds_history(tmp_path: Path) -> None:
    job = JobDir(tmp_path)
    assert job.committed_days() == [] and job.latest_before(D1) is None
    part = job.begin(D2)
    (part / "state.npz").write_bytes(b"x")
    assert not job.is_committed(D2) and job.committed_days() == []  # a partial day is invisible
    job.begin(D2)  # a re-run after a crash starts the day again from scratch
    assert not (part / "state.npz").exists()
    job.work_dir(D2).mkdir(parents=True)
    job.commit(D2, {"day": D2.isoformat(), "nce": 0.9})
    assert job.is_committed(D2) and not job.work_dir(D2).exists()
    with pytest.raises(FileExistsError, match="already committed"):
        job.begin(D2)
    job.begin(D1)
    job.commit(D1, {"day": D1.isoformat(), "nce": 0.95})
    assert job.committed_days() == [D1, D2] and job.latest_before(D3) == D2
    assert [h["day"] for h in job.history()] == ["2026-01-01", "2026-01-02"]  # in day order, not commit order
    # history.jsonl is derived: lost or stale, the next commit rewrites it from the committed days.
    (tmp_path / "history.jsonl").write_text("")
    job.begin(D3)
    job.commit(D3, {"day": D3.isoformat(), "nce": 0.8})
    assert [h["nce"] for h in job.history()] == [0.95, 0.9, 0.8]


def test_lock_is_freed_when_its_holder_is_terminated(tmp_path: Path) -> None:
    proc = hold_lock(tmp_path)
    proc.terminate()  # SIGTERM: python dies without running its own release
    proc.wait()
    deadline = time.time() + 5
    while True:
        try:
            with JobLock(tmp_path):
                break
        except JobLocked:
            assert time.time() < deadline, "lock not freed after its holder exited"
            time.sleep(0.05)


def test_plan_days(tmp_path: Path) -> None:
    from framework.jobs.layout import DayPlanError, plan_days

    job = JobDir(tmp_path)
    logs = [D1, D2, D3]
    assert plan_days(job, logs, None, catch_up=True) == logs
    assert plan_days(job, logs, "2026-01-01", catch_up=False) == [D1]  # the first day trains from scratch
    with pytest.raises(DayPlanError, match="not committed .* first 2026-01-01.*--catch-up"):
        plan_days(job, logs, "2026-01-02", catch_up=False)
    job.begin(D1)
    job.commit(D1, {"day": "2026-01-01"})
    assert plan_days(job, logs, "2026-01-02", catch_up=False) == [D2]
    with pytest.raises(DayPlanError, match="2026-01-09 is not in the logs"):
        plan_days(job, logs, "2026-01-09", catch_up=True)
    with pytest.raises(DayPlanError, match="no day="):
        plan_days(job, [], None, catch_up=True)


def test_unquoted_dates_in_yaml_are_strings(tmp_path: Path) -> None:
    from framework.config import load_job_config

    path = tmp_path / "job.yaml"
    path.write_text("base: " + str(REPO / "configs/daily/ucr.yaml") + "\nlogs:\n  generate: {start_day: 2026-02-03}\n")
    cfg = load_job_config(path, ["job.date=2026-02-05"])
    assert cfg.logs.generate.start_day == "2026-02-03" and cfg.job.date == "2026-02-05"
