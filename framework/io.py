"""Small, dependency-free file I/O every layer may use (data, checkpoint, trainers, jobs, benchmarks)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry (a rename or create inside it) to disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. directories cannot be opened on some platforms
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write ``path`` so that readers see the old file or the new one, never a torn one.

    Yields a file open on ``<path>.tmp``; on success it is fsynced, renamed over ``path`` and the directory fsynced.
    On an exception the temporary file is left behind and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: str | Path, payload: Mapping[str, Any]) -> None:
    """``payload`` as indented JSON through :func:`atomic_write`."""
    with atomic_write(path) as f:
        f.write(json.dumps(payload, indent=2, default=str) + "\n")
