"""The ranking trainer's own code path (``framework.trainers.ranking.train``) on 1 and 2 real gloo ranks.

- A run does not depend on the world size: the global batch is the config unit and UC-Sampling is keyed by the
  example, so 1 and 2 ranks train on the same examples with the same lists and end at the same weights.
- Saved at 2 ranks and resumed at 1 (and the reverse), a run continues on exactly the examples an uninterrupted
  run at the new size sees next: it ends where that run ends. The stop (step 30 of 40) lies in the second epoch
  (25 steps per epoch), where a position counted in per-rank batches of the new size would repeat or skip data.
- Evaluation does not depend on the world size: one checkpoint gives the same test AUC/NCE on 1 and 2 ranks.
- A checkpoint only resumes the run that wrote it (``train.resume``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from framework.checkpoint.export import export_plain, load_exported
from framework.checkpoint.resume import ResumeConfigError
from framework.config import load_job_config
from framework.distributed.spawn import run_multiprocess

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "ranking" / "demo.yaml"
STEPS, STOP = 40, 30
BASE = [
    "model.formulation=hybrid", "data.split=random", "data.max_item_hist=20", "data.max_user_hist=4",
    "data.synthetic.num_events=2000", "data.synthetic.num_users=150", "data.synthetic.num_items=60",
    "train.global_batch_size=64", "train.epochs=5", "train.checkpoint_every=10", "train.eval_batch_size=128",
    "train.progress=false", "train.tensorboard=false", "model.embedding_dim=16",
]  # fmt: skip
# 2000 events, random 4:1 split -> 1600 train examples -> 25 global batches of 64 per epoch.
# data.max_user_hist=4 < most items' earlier positives: UC-Sampling draws in every batch.


def _train(overrides: list[str]) -> dict[str, Any]:
    from framework.trainers.ranking import train

    results = train(load_job_config(CONFIG, overrides))
    return {k: results[k] for k in ("steps", "world_size", "test", "global_batch")}


def run(world_size: int, run_dir: Path, *extra: str) -> dict[str, Any]:
    overrides = [*BASE, f"train.run_dir={run_dir}", *extra]
    return run_multiprocess(_train, world_size, overrides, timeout_s=600)[0]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = sorted((run_dir / "checkpoints").glob("step_*[0-9]"))[-1]
    return load_exported(export_plain(latest, run_dir / "export.pt")).state_dict()


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ws")
    out: dict[str, Any] = {"root": root}
    for w in (1, 2):
        out[f"straight{w}"] = run(w, root / f"straight{w}", f"train.max_steps={STEPS}")
    for first, second in ((2, 1), (1, 2)):
        name = f"resumed{first}to{second}"
        run(first, root / name, f"train.max_steps={STOP}")
        out[name] = run(second, root / name, f"train.max_steps={STEPS}")
    return out


@pytest.mark.slow
def test_runs_do_not_depend_on_the_world_size(runs: dict[str, Any]) -> None:
    root = runs["root"]
    assert runs["straight1"]["global_batch"] == runs["straight2"]["global_batch"] == 64
    diff = max_abs_diff(final_weights(root / "straight1"), final_weights(root / "straight2"))
    assert diff < TOL, diff
    assert runs["straight1"]["test"] == pytest.approx(runs["straight2"]["test"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("first", "second"), [(2, 1), (1, 2)])
def test_resume_at_another_world_size_continues_exactly(runs: dict[str, Any], first: int, second: int) -> None:
    root = runs["root"]
    resumed = runs[f"resumed{first}to{second}"]
    assert resumed["steps"] == STEPS and resumed["world_size"] == second
    diff = max_abs_diff(final_weights(root / f"resumed{first}to{second}"), final_weights(root / f"straight{second}"))
    assert diff < TOL, diff
    assert resumed["test"] == pytest.approx(runs[f"straight{second}"]["test"], abs=1e-4)


@pytest.mark.slow
def test_evaluation_does_not_depend_on_the_world_size(runs: dict[str, Any]) -> None:
    # The 2-rank run's final checkpoint, evaluated again on 1 rank (resume at the last step: nothing to train).
    copy = runs["root"] / "eval_on_1"
    shutil.copytree(runs["root"] / "straight2", copy)
    again = run(1, copy, f"train.max_steps={STEPS}")
    assert again["steps"] == STEPS
    assert again["test"] == pytest.approx(runs["straight2"]["test"], abs=1e-6)
    assert again["test"]["num_examples"] == runs["straight2"]["test"]["num_examples"] == 400


TOL = 2e-4
"""Max |weight difference| between runs that saw the same data: float reduction order (1 vs 2 ranks, fused
Adagrad / Adam) leaves ~1e-6; a run fed other examples (a shifted epoch position) differs by > 1e-2."""


def test_resume_refuses_a_different_run(tmp_path: Path) -> None:
    from launch.train import main

    tiny = [*BASE, "train.max_steps=2", f"train.run_dir={tmp_path / 'r'}"]
    assert main(["--config", str(CONFIG), *tiny])["steps"] == 2
    with pytest.raises(ResumeConfigError) as e:
        main(["--config", str(CONFIG), *tiny, "optim.dense_lr=0.01", "model.cross_layers=1"])
    msg = str(e.value)
    assert "optim.dense_lr: 0.001 -> 0.01" in msg and "model.cross_layers: 2 -> 1" in msg
    assert "train.resume=force" in msg and "train.max_steps" not in msg
    # Keys that may change: more steps, logging, evaluation size, paths.
    extended = main(["--config", str(CONFIG), *tiny, "train.max_steps=4", "train.log_every=1"])
    assert extended["steps"] == 4
    forced = main(["--config", str(CONFIG), *tiny, "train.max_steps=5", "optim.dense_lr=0.01", "train.resume=force"])
    assert forced["steps"] == 5
    fresh = main(["--config", str(CONFIG), *tiny, "optim.dense_lr=0.01", "train.resume=never"])
    assert fresh["steps"] == 2  # started over
