"""Small, dependency-free file I/O every layer may use (data, checkpoint, trainers, jobs, benchmarks)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


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


def write_json_atomic(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON so that readers see the old file or the new one, never a torn one.

    The text goes to ``<path>.tmp``, is fsynced, and replaces ``path`` by rename; the directory is fsynced after.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(payload, indent=2, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
