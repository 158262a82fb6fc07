"""The clip trainer end to end through torchrun (2 gloo ranks, DeepSpeed ZeRO-2 on CPU) on offline-image shards.

- an uninterrupted run writes metrics, checkpoints and the final fp32 model;
- SIGKILL right after step 3 is committed, restart → the final model equals the uninterrupted run's (the data
  stream and the engine state both resume exactly);
- saved on 2 ranks and resumed on 1 (and the reverse), the run continues at the epoch after the samples it
  consumed; a run with another config is refused;
- ``scalefirst eval clip`` evaluates the finished run (zero-shot, probe, retrieval, geometry, figure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from framework.data.clip.offline_images import build_demo_dataset
from framework.data.clip.shards import write_shards

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "clip" / "demo.yaml"
OVERRIDES = [
    "model.image_size=32", "model.vision_width=8", "model.vision_heads=4", "model.embed_dim=32",
    "model.text_width=32", "model.context_length=40",
    "data.workers=1", "data.shuffle_buffer=40",
    "train.batch_size=8", "train.max_steps=6", "train.checkpoint_every=3", "train.keep_checkpoints=4",
    "train.log_every=1", "train.progress=false", "optim.warmup_steps=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clipdata")
    paths = build_demo_dataset(root / "raw", n_train=160, n_val=48, seed=0, size=32, zeroshot_per_class=4,
                               progress=False)  # fmt: skip
    for split in ("train", "val"):
        write_shards(paths[f"{split}_images"], paths[f"{split}_captions"], root / split, samples_per_shard=40,
                     progress=False)  # fmt: skip
    return {"train": root / "train", "val": root / "val", "zeroshot": paths["zeroshot"]}


def torchrun(data: dict[str, Path], run_dir: Path, *extra: str, nproc: int = 2, fault: str | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SCALEFIRST_FAULT", None)
    if fault:
        env["SCALEFIRST_FAULT"] = fault
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "launch.train", "--config", str(CONFIG), *OVERRIDES, f"train.run_dir={run_dir}",
           f"data.train_shards={data['train']}", f"data.val_shards={data['val']}", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final" / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def straight(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    proc = torchrun(data, run_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


def test_run_writes_metrics_checkpoints_and_final_model(straight: Path) -> None:
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["world_size"] == 2 and metrics["global_batch"] == 16
    assert [h["step"] for h in metrics["history"]] == [1, 2, 3, 4, 5, 6]
    first, last = metrics["history"][0], metrics["history"][-1]
    # rankclip: the total is CLIP + 1/16 (in-modal + cross-modal), every term logged
    assert last["loss"] == pytest.approx(last["clip"] + (last["in_modal"] + last["cross_modal"]) / 16, rel=1e-5)
    assert last["in_modal"] > 0 and last["cross_modal"] > 0 and last["loss"] < first["loss"]
    assert metrics["data"]["bad"] == 0 and metrics["data"]["seen"] >= 6 * 8
    ckpts = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert ckpts == ["step_00000003", "step_00000006"]
    state = final_model(straight)
    assert state["logit_scale"].shape == () and state["visual.attnpool.c_proj.weight"].dtype == torch.float32


@pytest.mark.slow
def test_kill_and_resume_ends_identical(data: dict[str, Path], straight: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    proc = torchrun(data, run_dir, fault="kill_after_step=3")
    assert proc.returncode != 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000003"]
    proc = torchrun(data, run_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed at optimizer step 3" in proc.stderr
    want, got = final_model(straight), final_model(run_dir)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    # the loss of the resumed steps is the uninterrupted run's too (same samples in the same order)
    h_want = json.loads((straight / "metrics.json").read_text())["history"]
    h_got = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [round(h["loss"], 6) for h in h_got] == [round(h["loss"], 6) for h in h_want[3:]]


@pytest.mark.slow
@pytest.mark.parametrize(("first", "second", "next_epoch"), [(2, 1, 2), (1, 2, 1)])
def test_resume_on_another_world_size_starts_after_the_samples_consumed(
    data: dict[str, Path], tmp_path: Path, first: int, second: int, next_epoch: int
) -> None:
    """160 samples, batch 16 per rank: an epoch is 5 steps on 2 ranks, 10 on 1. Eight steps are 1.6 epochs on 2
    ranks (continue at epoch 2) and 0.8 on 1 rank (continue at epoch 1). A position counted in steps of the new
    world size would restart epoch 1 (repeating samples) and epoch 2 (skipping the rest of epoch 1)."""
    run_dir = tmp_path / "elastic"
    small = ["train.batch_size=16", "train.checkpoint_every=null", "train.log_every=4"]
    proc = torchrun(data, run_dir, *small, "train.max_steps=8", nproc=first)
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((run_dir / "checkpoints" / "step_00000008" / "meta.json").read_text())
    want = {"epoch": 1, "samples_in_epoch": 96} if first == 2 else {"epoch": 0, "samples_in_epoch": 128}
    assert meta["data"] == want and meta["config"]["train"]["batch_size"] == 16
    proc = torchrun(data, run_dir, *small, "train.max_steps=10", nproc=second)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed at optimizer step 8" in proc.stderr and f"starting at epoch {next_epoch}" in proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == second and metrics["steps"] == 10
    # A different run (another lr) is refused before it trains, with the key named.
    proc = torchrun(data, run_dir, *small, "train.max_steps=12", "optim.lr=0.01", nproc=second)
    assert proc.returncode != 0 and "optim.lr: 0.002 -> 0.01" in proc.stderr, proc.stderr[-3000:]


def test_eval_cli(data: dict[str, Path], straight: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "launch.cli", "eval", "clip", "--run-dir", str(straight), "--pairs",
           str(data["val"]), "--zeroshot", str(data["zeroshot"]), "--probe", str(data["zeroshot"]), "--out",
           str(out), "--name", "tiny"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "eval.json").read_text())
    assert set(result["zero_shot"]) == {"colors", "digits", "shapes"}
    for fam in result["zero_shot"].values():
        assert 0.0 <= fam["top1"] <= fam["top3"] <= fam["top5"] <= 1.0
    assert result["pairs"]["num_pairs"] == 48 and -1.0 <= result["pairs"]["alignment"] <= 1.0
    assert (out / "modality_gap.png").stat().st_size > 0
    assert "tiny" in proc.stdout and "Zero-shot" in proc.stdout


def test_hf_text_tower_under_zero3(data: dict[str, Path], tmp_path: Path) -> None:
    """A transformers BERT text tower (built from a config) trains under ZeRO-3 and reloads for evaluation."""
    from framework.trainers.clip import load_trained_clip

    run_dir = tmp_path / "bert_zero3"
    proc = torchrun(data, run_dir, "model.text_model=bert", "engine.zero_stage=3", "train.max_steps=2",
                    "train.checkpoint_every=null")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["engine"]["zero_stage"] == 3
    model, tokenizer, cfg = load_trained_clip(run_dir)
    assert cfg.model.text_model == "bert" and type(model.text.encoder).__name__ == "BertModel"
    batch = tokenizer(["a red circle", "a handwritten digit seven"])
    emb = model.encode_text(batch.tokens_BL, batch.eot_index_B)
    assert emb.shape == (2, cfg.model.embed_dim) and torch.isfinite(emb).all()
