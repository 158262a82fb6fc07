"""A daily job's directory, and how a day is committed exactly once.

::

    <job_dir>/
        LOCK                       framework/jobs/lock.py
        days/2026-01-05/           committed: the rename from .partial is the commit
            checkpoint/            the model after training day D (DCP, any world size)
            state.npz              history state after day D (framework/data/logs/history.py)
            vocab.<table>.npy      id spaces after day D (framework/data/logs/ids.py)
            metrics.json           what day D's run measured
        days/2026-01-06.partial/   being built; never read; removed when the day is started again
        work/2026-01-06/           mid-day checkpoints and featurized rows of the day in progress
        history.jsonl              one line per committed day, rebuilt from the days' metrics.json at every commit

A day is committed by renaming ``days/D.partial`` to ``days/D`` (atomic on POSIX; the job directory is fsynced).
Whatever is killed when, a day is either committed with all its files or not at all; re-running a committed day
does nothing. ``history.jsonl`` is derived data (rewritten atomically from the committed days), so a crash between
the commit and its history line loses nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from framework.checkpoint.dcp import fault_point
from framework.io import atomic_write, fsync_dir, write_json_atomic


class JobDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.days_dir = self.root / "days"

    def day_dir(self, day: dt.date) -> Path:
        return self.days_dir / day.isoformat()

    def work_dir(self, day: dt.date) -> Path:
        return self.root / "work" / day.isoformat()

    def committed_days(self) -> list[dt.date]:
        if not self.days_dir.is_dir():
            return []
        out = []
        for p in self.days_dir.iterdir():
            if p.is_dir() and not p.name.endswith(".partial") and (p / "metrics.json").is_file():
                try:
                    out.append(dt.date.fromisoformat(p.name))
                except ValueError:
                    continue
        return sorted(out)

    def is_committed(self, day: dt.date) -> bool:
        return (self.day_dir(day) / "metrics.json").is_file()

    def latest_before(self, day: dt.date) -> dt.date | None:
        """The latest committed day before ``day`` (the warm start of ``day``), or None."""
        earlier = [d for d in self.committed_days() if d < day]
        return earlier[-1] if earlier else None

    def begin(self, day: dt.date) -> Path:
        """A fresh ``days/D.partial`` (an old one, from a killed commit, is removed)."""
        if self.is_committed(day):
            raise FileExistsError(f"{self.day_dir(day)} is already committed")
        partial = self.days_dir / f"{day.isoformat()}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        return partial

    def commit(self, day: dt.date, metrics: dict[str, Any]) -> Path:
        """Write metrics.json into the partial day, rename it into place, rebuild history.jsonl, drop work/D."""
        partial = self.days_dir / f"{day.isoformat()}.partial"
        write_json_atomic(partial / "metrics.json", metrics)
        fsync_dir(partial)
        fault_point("kill_in_commit", day.isoformat())
        final = self.day_dir(day)
        os.replace(partial, final)
        fsync_dir(self.days_dir)
        self.rebuild_history()
        shutil.rmtree(self.work_dir(day), ignore_errors=True)
        return final

    def rebuild_history(self) -> Path:
        lines = [json.dumps(json.loads((self.day_dir(d) / "metrics.json").read_text())) for d in self.committed_days()]
        path = self.root / "history.jsonl"
        with atomic_write(path) as f:
            f.write("".join(line + "\n" for line in lines))
        return path

    def history(self) -> list[dict[str, Any]]:
        path = self.root / "history.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class DayPlanError(ValueError):
    """The requested day cannot run (missing in the logs, or an earlier day is not committed)."""


def plan_days(job: JobDir, log_days: list[dt.date], date: str | None, catch_up: bool) -> list[dt.date]:
    """The days to run, in order (committed ones included: they are reported and skipped)."""
    if not log_days:
        raise DayPlanError("the log root holds no day=YYYY-MM-DD directory")
    target = dt.date.fromisoformat(date) if date else log_days[-1]
    if target not in log_days:
        raise DayPlanError(f"day {target} is not in the logs ({log_days[0]} .. {log_days[-1]}, {len(log_days)} days)")
    upto = log_days[: log_days.index(target) + 1]
    if catch_up:
        return upto
    before = upto[:-1]
    if before and not job.is_committed(before[-1]) and not job.is_committed(target):
        missing = [d for d in before if not job.is_committed(d)]
        raise DayPlanError(
            f"day {target} trains from day {before[-1]}, which is not committed ({len(missing)} earlier day(s) "
            f"missing, first {missing[0]}): run with --catch-up"
        )
    return [target]
