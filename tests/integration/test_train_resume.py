"""End to end through torchrun (2 gloo ranks): train, SIGKILL a rank, resume, and end identical.

Scenarios, all compared with one uninterrupted run of the same config:
- killed right after step 8 was committed → the restart resumes at step 8;
- killed while step 8 was being written (shards on disk, not committed) → the restart ignores the partial
  directory and resumes at step 4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from framework.checkpoint.export import export_plain, load_exported

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "ranking" / "demo.yaml"
OVERRIDES = [
    "model.formulation=hybrid",
    "data.synthetic.num_events=6000",
    "data.synthetic.num_users=300",
    "data.synthetic.num_items=200",
    "train.global_batch_size=128",
    "train.max_steps=12",
    "train.checkpoint_every=4",
    "train.keep_checkpoints=5",
    "train.eval_batch_size=256",
    "train.progress=false",
]


def torchrun(run_dir: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SCALEFIRST_FAULT", None)
    if fault:
        env["SCALEFIRST_FAULT"] = fault
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "launch.train",
           "--config", str(CONFIG), *OVERRIDES, f"train.run_dir={run_dir}"]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def committed_steps(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def final_state(run_dir: Path, tmp: Path) -> dict[str, torch.Tensor]:
    latest = sorted((run_dir / "checkpoints").glob("step_*[0-9]"))[-1]
    return load_exported(export_plain(latest, tmp / f"{run_dir.name}.pt")).state_dict()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    proc = torchrun(run_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


def test_run_directory_contents(uninterrupted: Path) -> None:
    metrics = json.loads((uninterrupted / "metrics.json").read_text())
    assert metrics["steps"] == 12 and metrics["world_size"] == 2
    # 12 steps are a plumbing check, not a learning one: tests/integration/test_ranking_learns.py has the AUC bar.
    assert 0.0 < metrics["test"]["like/auc"] < 1.0 and metrics["test"]["num_examples"] > 0
    assert set(metrics["collisions"]) == {"item", "user"}
    assert (uninterrupted / "config.yaml").is_file()
    assert list((uninterrupted / "tb").glob("events.out.tfevents.*")), "TensorBoard scalars missing"
    assert committed_steps(uninterrupted) == ["step_00000004", "step_00000008", "step_00000012"]
    meta = json.loads((uninterrupted / "checkpoints" / "step_00000012" / "meta.json").read_text())
    assert meta["config"]["model"]["formulation"] == "hybrid" and meta["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "resumes_from", "left_behind"), [
    ("kill_after_step=8", 8, ["step_00000004", "step_00000008"]),
    ("kill_in_save=8", 4, ["step_00000004", "step_00000008.partial"]),
])  # fmt: skip
def test_kill_then_resume_continues_identically(
    uninterrupted: Path, tmp_path: Path, fault: str, resumes_from: int, left_behind: list[str]
) -> None:
    run_dir = tmp_path / "crashy"
    crashed = torchrun(run_dir, fault)
    assert crashed.returncode != 0, "the fault injection must kill the run"
    assert committed_steps(run_dir) == left_behind
    assert not (run_dir / "metrics.json").exists()

    resumed = torchrun(run_dir)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"at step {resumes_from} " in resumed.stderr, resumed.stderr[-2000:]
    assert not list((run_dir / "checkpoints").glob("*.partial"))

    want, got = final_state(uninterrupted, tmp_path), final_state(run_dir, tmp_path)
    assert sorted(got) == sorted(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)
    m_want = json.loads((uninterrupted / "metrics.json").read_text())["test"]
    m_got = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert m_got == pytest.approx(m_want, abs=1e-6)


def test_movielens_short_run_in_process(ml100k_dir: Path, tmp_path: Path) -> None:
    from launch.train import main

    results = main([
        "--config", str(REPO / "configs" / "ranking" / "movielens.yaml"),
        f"data.path={ml100k_dir}", "model.formulation=hybrid", "data.max_item_hist=64", "data.max_user_hist=64", "model.embedding_dim=16",
        "train.max_steps=6", "train.global_batch_size=128", "train.eval_max_examples=3000", "train.progress=false",
        f"train.run_dir={tmp_path / 'ml'}",
    ])  # fmt: skip
    assert results["world_size"] == 1 and results["steps"] == 6
    assert results["test"]["num_examples"] == 3000
    assert 0.0 < results["test"]["like/auc"] < 1.0
    assert results["num_embeddings"] == {"item": 1682, "user": 943}  # exact vocabularies (hash_size null)
    assert results["collisions"]["user"]["collision_rate"] == 0.0
