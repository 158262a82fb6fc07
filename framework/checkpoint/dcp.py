"""torch.distributed.checkpoint (DCP) checkpoints with atomic commit, resharding on load, and plain export.

Layout under ``<run_dir>/checkpoints``::

    step_00000120/            committed (the rename is the commit; a crash before it leaves only *.partial)
        .metadata  __*_*.distcp   DCP shards (sharded tables saved by their owners, replicated tensors once)
        meta.json                 step, world size, sharding plan, resolved config, trainer state
    step_00000240.partial/    an interrupted save: never loaded, removed by the next save

DCP stores sharded tensors by global offsets, so a checkpoint saved on 2 ranks table-wise loads on 1 rank,
column-wise, or into an unsharded model (:func:`export_plain`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from framework.io import fsync_dir

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")
FAULT_ENV = "SCALEFIRST_FAULT"
"""Fault injection for crash tests: ``kill_after_step=N`` (SIGKILL once step N is committed),
``kill_in_save=N`` (SIGKILL after the shards of step N are written, before the commit) or
``kill_in_commit=YYYY-MM-DD`` (a daily job, after the day's files are written, before its rename)."""


def fault_point(kind: str, value: object) -> None:
    """SIGKILL this process if ``$SCALEFIRST_FAULT`` is ``<kind>=<value>`` (crash tests; a no-op otherwise)."""
    spec = os.environ.get(FAULT_ENV, "")
    if spec == f"{kind}={value}":
        logger.warning("fault injection: %s at %s, killing rank with SIGKILL", kind, value)
        os.kill(os.getpid(), signal.SIGKILL)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_atomic(obj: Any, out: str | Path) -> Path:
    """``torch.save`` to ``out.tmp`` then rename: a crash never leaves a truncated file under ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(out)
    return out


class Checkpointer:
    """Saves and finds committed DCP checkpoints. All ranks call ``save``/``load`` collectively."""

    def __init__(self, root: str | Path, *, keep: int = 2, rank: int = 0) -> None:
        self.root = Path(root)
        self.keep = keep
        self.rank = rank

    def committed(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        steps = [p for p in self.root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
        return sorted(steps, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]

    def latest(self) -> Path | None:
        committed = self.committed()
        return committed[-1] if committed else None

    def save(self, step: int, state: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
        final = self.root / f"step_{step:08d}"
        partial = self.root / f"step_{step:08d}.partial"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in [*self.root.glob("*.partial"), *self.root.glob("*.replaced")]:
                shutil.rmtree(stale)  # left by a crashed save; never complete / already superseded
        _barrier()
        dcp.save(dict(state), checkpoint_id=str(partial))
        fault_point("kill_in_save", step)
        _barrier()
        if self.rank == 0:
            meta_path = partial / "meta.json"
            with open(meta_path, "w") as f:
                json.dump({"step": step, **meta}, f, indent=2, default=str)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(partial)
            replaced = None
            if final.exists():  # re-saving a step: keep the old copy until the new one is committed
                replaced = final.with_name(final.name + ".replaced")
                os.replace(final, replaced)
            os.replace(partial, final)  # atomic on POSIX: the checkpoint exists completely or not at all
            fsync_dir(self.root)
            if replaced is not None:
                shutil.rmtree(replaced)
            for old in self.committed()[: -self.keep]:
                shutil.rmtree(old)
        _barrier()
        fault_point("kill_after_step", step)
        return final

    @staticmethod
    def read_meta(path: str | Path) -> dict[str, Any]:
        meta_path = Path(path) / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: not a committed scalefirst checkpoint (meta.json missing)")
        return json.loads(meta_path.read_text())

    @staticmethod
    def load(path: str | Path, state: dict[str, Any]) -> None:
        """Fill ``state`` in place from the checkpoint (resharding as needed).

        Raises:
            FileNotFoundError: ``path`` is not a committed checkpoint: an interrupted save (``*.partial``), a
                superseded copy (``*.replaced``), or a directory without DCP metadata or ``meta.json``.
        """
        path = require_committed(path)
        dcp.load(state, checkpoint_id=str(path))


def require_committed(path: str | Path) -> Path:
    """``path`` if it is a committed checkpoint directory, else ``FileNotFoundError`` saying what it is."""
    path = Path(path)
    if path.name.endswith((".partial", ".replaced")):
        kind = "an interrupted save" if path.name.endswith(".partial") else "a superseded copy"
        raise FileNotFoundError(
            f"{path}: {kind}, not a committed checkpoint; load a step_XXXXXXXX directory (Checkpointer.latest())"
        )
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"{path}: no meta.json, not a committed checkpoint")
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path}: no DCP .metadata, not a complete checkpoint")
    return path


def load_model_state_plain(path: str | Path, model: torch.nn.Module) -> None:
    """Load the model part of a (sharded) checkpoint into an unsharded model in this single process."""
    path = require_committed(path)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path), no_dist=True)
    model.load_state_dict(state["model"])
