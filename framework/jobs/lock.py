"""An exclusive lock per daily job, so two runs of one job never train the same day at once.

``<job_dir>/LOCK`` is locked with ``fcntl.flock`` (the kernel drops the lock when its process dies, however it dies)
and holds the owner's pid, host and start time for the error message. A LOCK file that records an owner but is not
locked is a **stale lock**: its process died without releasing it; the next run takes it over and logs who held it.
``flock`` is local to one machine (and unreliable on some network file systems): run one job's days from one host.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)


class JobLocked(RuntimeError):
    """Another live process holds the job's lock; the message names it."""


class JobLock:
    """``with JobLock(job_dir): ...`` (or :meth:`acquire` / :meth:`release`)."""

    def __init__(self, job_dir: str | Path) -> None:
        self.path = Path(job_dir) / "LOCK"
        self._fd: int | None = None
        self.stale_owner: dict | None = None
        """The owner recorded in a stale lock this run took over (None if there was none)."""

    def acquire(self) -> JobLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise JobLocked(
                f"{self.path.parent} is locked by pid {owner.get('pid', '?')} on {owner.get('host', '?')} since "
                f"{owner.get('since', '?')}: another run of this job is in progress"
            ) from None
        owner = _read_owner(fd)
        if owner:
            self.stale_owner = owner
            logger.warning(
                "%s: stale lock from pid %s on %s (since %s), whose process is gone: taking it over",
                self.path, owner.get("pid"), owner.get("host"), owner.get("since"),
            )  # fmt: skip
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # a released lock records no owner: only a crash leaves one behind
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> JobLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_owner(fd: int) -> dict:
    data = os.pread(fd, 4096, 0)
    if not data.strip():
        return {}
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "since": f"(unreadable lock file: {data[:80]!r})"}
