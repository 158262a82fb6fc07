"""Checkpointer commit rules in one process (the 2-rank behaviour is in tests/distributed and integration)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from framework.checkpoint.dcp import Checkpointer, load_model_state_plain

REPO = Path(__file__).resolve().parents[2]


def _save(ckpt: Checkpointer, step: int, value: float) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that it runs without a process group
        return ckpt.save(step, {"w": torch.full((3,), value)}, {"note": value})


def _load(path: Path) -> torch.Tensor:
    state = {"w": torch.zeros(3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Checkpointer.load(path, state)
    return state["w"]


def test_latest_is_newest_committed_and_old_ones_are_pruned(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        _save(ckpt, step, float(step))
    assert [p.name for p in ckpt.committed()] == ["step_00000002", "step_00000003"]
    assert torch.equal(_load(ckpt.latest()), torch.full((3,), 3.0))
    assert Checkpointer.read_meta(ckpt.latest()) == {"step": 3, "note": 3.0}


def test_resaving_a_step_replaces_it_only_after_the_new_copy_is_committed(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, keep=3)
    _save(ckpt, 5, 1.0)
    _save(ckpt, 5, 2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000005"]
    assert torch.equal(_load(ckpt.latest()), torch.full((3,), 2.0))


def test_leftovers_of_crashed_saves_are_ignored_then_cleaned(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, keep=3)
    _save(ckpt, 4, 4.0)
    (tmp_path / "step_00000008.partial").mkdir()  # crash while writing step 8
    (tmp_path / "step_00000006.replaced").mkdir()  # crash while re-saving step 6
    assert ckpt.latest() == tmp_path / "step_00000004"
    _save(ckpt, 9, 9.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000009"]


_CRASHING_SAVE = """
import sys, warnings, torch
from framework.checkpoint.dcp import Checkpointer
warnings.simplefilter("ignore")
ckpt = Checkpointer(sys.argv[1], keep=5)
ckpt.save(1, {"w": torch.full((3,), 1.0)}, {"note": 1})
ckpt.save(2, {"w": torch.full((3,), 2.0)}, {"note": 2})  # SCALEFIRST_FAULT kills the process inside this save
"""


def test_a_real_interrupted_save_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "SCALEFIRST_FAULT": "kill_in_save=2"}
    proc = subprocess.run([sys.executable, "-c", _CRASHING_SAVE, str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = tmp_path / "step_00000002.partial"
    assert (partial / ".metadata").is_file(), "the crash left DCP shards and metadata behind"
    assert Checkpointer(tmp_path).latest() == tmp_path / "step_00000001"
    with pytest.raises(FileNotFoundError, match="interrupted save, not a committed checkpoint"):
        _load(partial)
    with pytest.raises(FileNotFoundError, match="interrupted save"):
        load_model_state_plain(partial, torch.nn.Linear(3, 1))
    assert torch.equal(_load(tmp_path / "step_00000001"), torch.full((3,), 1.0))
