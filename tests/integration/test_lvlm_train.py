"""The LVLM trainer end to end through torchrun (gloo, DeepSpeed on CPU) on a small scene world: a tiny LLaVA, LoRA
instruct stage with visual-dependence re-weighting switched on halfway.

- an uninterrupted 2-rank ZeRO-2 run writes metrics (with the dependence class shares and mean weights of the
  re-weighted steps), checkpoints of the trainable parameters, the merged model (plain state dict and
  save_pretrained), eval.json and the example figure; ``scalefirst eval lvlm`` reproduces its eval.json;
- ZeRO-2 and ZeRO-3 on 2 ranks match 1 rank accumulating the same global batch in 2 micro-batches (same samples,
  same global-token normalization, per-sample noise) for every parameter of the merged model;
- SIGKILL after the step-2 checkpoint, restart: the final model is bit-identical to the uninterrupted run's;
- 2 -> 1 -> 2 ranks (killed after steps 2 and 4) ends where the 2-rank run ends;
- the data filter drops exactly the samples whose summed visual dependence under the scoring model is highest /
  lowest, recomputed here independently of the run;
- a pretrain stage with ``trainable: [projector]`` (bf16 autocast) changes the projector only.

Tolerance of the cross-world-size comparisons: the same math in other reduction orders (gradients all-reduced over
ranks instead of one backward over the batch, ZeRO's flat-partition gradient norm), ~1e-7 relative per step, passed
through AdamW over 6 steps; asserted atol 2e-5 / rtol 1e-4 as in tests/distributed/test_zero_engines.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from framework.data.lvlm.dataset import load_train_set
from framework.data.lvlm.scenes import build_scene_world
from framework.data.lvlm.tokenizer import scene_tokenizer

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "lvlm" / "instruct.yaml"
TINY = [
    "model.image_size=32", "model.patch_size=8", "model.vision_width=32", "model.vision_heads=2",
    "model.text_width=32", "model.text_heads=2", "model.text_intermediate=64", "model.max_positions=128",
    "data.max_length=128", "lora.r=4", "lora.alpha=8", "train.init_from=null", "engine.precision=fp32",
]  # fmt: skip
OVERRIDES = [
    *TINY, "loss.kind=reweighted", "loss.start_fraction=0.5", "loss.tau=20", "loss.threshold=0.02", "optim.lr=3e-3", "optim.projector_lr=1e-3",
    "optim.warmup_steps=2", "train.max_steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=4",
    "train.log_every=1", "train.progress=false", "train.tensorboard=false", "data.eval_limit=0",
]  # fmt: skip
NO_DROPOUT = ["lora.dropout=0.0"]
ATOL, RTOL = 2e-5, 1e-4


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    build_scene_world(root, 64, 8, seed=0, samples_per_shard=32, progress=False)
    return root


def torchrun(scenes: Path, run_dir: Path, *extra: str, nproc: int = 2, fault: str | None = None,
             config: Path = CONFIG) -> subprocess.CompletedProcess:  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SCALEFIRST_FAULT", None)
    if fault:
        env["SCALEFIRST_FAULT"] = fault
    batch = f"train.batch_size={8 // nproc}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "launch.train", "--config", str(config), *OVERRIDES, batch, f"data.scenes={scenes}",
           f"train.run_dir={run_dir}", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]


def final(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final" / "model.pt", weights_only=True)


def assert_models(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float, rtol: float) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.fixture(scope="module")
def straight(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    ok(torchrun(scenes, run_dir, "data.eval_limit=4"))
    return run_dir


@pytest.fixture(scope="module")
def parity(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity")
    # one rank accumulates two micro-batches of 4: the same global batch of 8 as 2 ranks x 4
    runs = {"zero2": (2, 2, []), "zero3": (2, 3, []),
            "one_rank": (1, 2, ["train.batch_size=4", "engine.grad_accum_steps=2"])}  # fmt: skip
    for name, (nproc, stage, extra) in runs.items():
        ok(torchrun(scenes, root / name, *NO_DROPOUT, f"engine.zero_stage={stage}", *extra, nproc=nproc))
    return {name: root / name for name in runs}


def test_run_writes_metrics_checkpoints_merged_model_and_eval(straight: Path, scenes: Path, tmp_path: Path) -> None:
    m = json.loads((straight / "metrics.json").read_text())
    assert m["steps"] == 6 and m["world_size"] == 2 and m["global_batch"] == 8 and m["stage"] == "instruct"
    assert 0 < m["trainable_params"] < m["params"]
    assert [h["reweighting"] for h in m["history"]] == [0, 0, 0, 1, 1, 1]  # from half of training
    for h in m["history"][3:]:
        shares = h["share_image_positive"] + h["share_image_negative"] + h["share_image_invariant"]
        assert shares == pytest.approx(1.0) and h["mean_weight_invariant"] > 0
    assert "share_image_positive" not in m["history"][0]
    assert m["step_seconds"]["mle"] > 0 and m["step_seconds"]["reweighted"] > 0
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == [f"step_{s:08d}" for s in (2, 4, 6)]
    meta = json.loads((straight / "checkpoints" / "step_00000006" / "meta.json").read_text())
    assert all("lora_" in n or "multi_modal_projector" in n for n in meta["params"])  # the trainable ones only
    assert any("vision_tower" in n for n in meta["frozen"])
    # the merged export is a plain LLaVA: no adapter names, loadable by transformers
    state = final(straight)
    assert not any("lora" in k for k in state)
    from transformers import LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(straight / "final" / "hf")
    torch.testing.assert_close(hf.state_dict()["lm_head.weight"], state["lm_head.weight"])
    ev = json.loads((straight / "eval.json").read_text())
    assert ev["captions"] == len(ev["examples"]) == 4 and set(ev["pope"]) == {"random", "popular", "adversarial"}
    assert (straight / "examples.png").stat().st_size > 0 and m["eval"]["chair_s"] == ev["chair_s"]
    # scalefirst eval lvlm on the finished run writes the same evaluation
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "eval", "lvlm", "--run-dir", str(straight),
                           "--scenes", str(scenes), "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    ok(proc)
    again = json.loads((out / "eval.json").read_text())
    assert again["examples"] == ev["examples"] and again["pope_answers"] == ev["pope_answers"]
    assert "chair_s" in proc.stdout and (out / "examples.png").is_file()
    # HALC from the command line, its constants from --halc (sequential FOVs: two forwards per grounded step)
    cmd = [sys.executable, "-m", "launch.cli", "eval", "lvlm", "--run-dir", str(straight), "--scenes", str(scenes),
           "--out", str(out), "--limit", "2", "--decoding", "halc"]  # fmt: skip
    proc = subprocess.run([*cmd, "--halc", "fovs=2", "batched=false"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    ok(proc)
    stats = json.loads((out / "eval_halc.json").read_text())["halc_stats"]
    assert stats["grounded"] > 0 and stats["fov_forwards"] == 2 * stats["grounded"]
    bad = subprocess.run([*cmd, "--halc", "fovz=2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown key 'fovz'" in bad.stderr


def test_zero2_and_zero3_on_two_ranks_match_one_rank_with_accumulation(parity: dict[str, Path]) -> None:
    one = final(parity["one_rank"])
    for name in ("zero2", "zero3"):
        assert_models(final(parity[name]), one, ATOL, RTOL)
    m = json.loads((parity["one_rank"] / "metrics.json").read_text())
    assert m["world_size"] == 1 and m["global_batch"] == 8
    # the logged loss is the global batch's (the ranks' shares summed), whatever the world size
    for name in ("zero2", "zero3"):
        h = json.loads((parity[name] / "metrics.json").read_text())["history"]
        assert [x["loss"] for x in h] == pytest.approx([x["loss"] for x in m["history"]], rel=1e-4)
        assert [x.get("share_image_negative") for x in h] == pytest.approx(
            [x.get("share_image_negative") for x in m["history"]], abs=1e-9
        )


@pytest.mark.slow
def test_kill_and_resume_ends_identical(scenes: Path, straight: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    assert torchrun(scenes, run_dir, "data.eval_limit=4", fault="kill_after_step=2").returncode != 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000002"]
    proc = torchrun(scenes, run_dir, "data.eval_limit=4")
    ok(proc)
    assert "resumed at optimizer step 2" in proc.stderr
    assert_models(final(run_dir), final(straight), 0, 0)
    h_want = json.loads((straight / "metrics.json").read_text())["history"]
    h_got = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["loss"] for h in h_got] == [h["loss"] for h in h_want[2:]]


@pytest.mark.slow
def test_two_one_two_ranks_resume_matches(scenes: Path, parity: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "elastic"
    assert torchrun(scenes, run_dir, *NO_DROPOUT, fault="kill_after_step=2").returncode != 0
    assert torchrun(scenes, run_dir, *NO_DROPOUT, nproc=1, fault="kill_after_step=4").returncode != 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "step_00000004"
    proc = torchrun(scenes, run_dir, *NO_DROPOUT)
    ok(proc)
    assert "resumed at optimizer step 4" in proc.stderr
    assert_models(final(run_dir), final(parity["zero2"]), ATOL, RTOL)
    # another global batch would change which samples a step holds: refused, naming the sizes
    proc = torchrun(scenes, tmp_path / "elastic", *NO_DROPOUT, "train.max_steps=8", "train.batch_size=2")
    assert proc.returncode != 0 and "global batch" in proc.stderr


def test_data_filter_drops_the_extreme_scores(scenes: Path, straight: Path, tmp_path: Path) -> None:
    from framework.trainers.lvlm import load_final_model, score_samples

    run_dir = tmp_path / "filtered"
    ok(torchrun(scenes, run_dir, f"data.filter_with={straight}", "data.drop_top=0.25", "data.drop_bottom=0.125",
                "train.max_steps=1", "loss.kind=mle"))  # fmt: skip
    record = json.loads((run_dir / "filter.json").read_text())
    model, cfg = load_final_model(straight)
    data = load_train_set(scenes, scene_tokenizer(), image_size=cfg.model.image_size,
                          image_tokens=cfg.model.image_tokens, max_length=128, turns="shuffled")  # fmt: skip
    scores = score_samples(model, data, pad_id=0, seed=cfg.train.seed, noise_step=900, rank=0, world_size=1)
    assert record["scores"] == pytest.approx(dict(zip(data.ids, scores, strict=True)), abs=1e-5)
    order = sorted(range(64), key=lambda i: scores[i])
    assert set(record["dropped"]) == {data.ids[i] for i in order[:8] + order[-16:]}
    assert record["kept"] == 40 == json.loads((run_dir / "metrics.json").read_text())["kept_samples"]


def test_pretrain_stage_trains_only_the_named_parts_in_bf16(scenes: Path, tmp_path: Path) -> None:
    from framework.trainers.lvlm import load_final_model

    run_dir = tmp_path / "pre"
    ok(torchrun(scenes, run_dir, "train.stage=pretrain", "train.trainable=[projector]", "loss.kind=mle",
                "train.max_steps=2", "engine.precision=bf16", nproc=1,
                config=REPO / "configs" / "lvlm" / "pretrain.yaml"))  # fmt: skip
    trained, cfg = load_final_model(run_dir)
    from framework.models.lvlm.model import build_lvlm
    from framework.trainers.lvlm import special_ids

    torch.manual_seed(cfg.train.seed)
    init = build_lvlm(cfg.model, len(scene_tokenizer()), **special_ids(scene_tokenizer())).state_dict()
    changed = {k for k, v in trained.state_dict().items() if not torch.equal(v, init[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("demo")
    model = [o for o in TINY if o.startswith(("model.", "data."))]
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "demo-lvlm", "--seeds", "1", "--pretrain-steps", "2",
                           "--steps", "2", "--train", "32", "--eval", "4", "--run-dir", str(root), *model,
                           "train.progress=false"], cwd=REPO, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    ok(proc)
    return root, proc


def test_demo_writes_the_results_interface(tiny_demo) -> None:
    tmp_path, proc = tiny_demo
    result = json.loads((tmp_path / "lvlm_demo.json").read_text())
    assert set(result["summary"]) == {"mle", "reweighted"}
    for kind in ("mle", "reweighted"):
        assert set(result["summary"][kind]) == {"chair_s", "chair_i", "recall", "pope_f1", "length"}
        run = json.loads((tmp_path / kind / "seed0" / "metrics.json").read_text())
        assert result["summary"][kind]["chair_s"] == run["eval"]["chair_s"]  # the mean of one seed
    assert result["reweight_step_time_ratio"] > 0 and "reweighted (mean of 1 seeds)" in proc.stdout


def test_halc_benchmark_smoke(tiny_demo, tmp_path: Path) -> None:
    demo, _ = tiny_demo
    out = tmp_path / "halc.json"
    args = ["--demo-dir", str(demo), "--seeds", "1", "--limit", "2", "--clip-steps", "2", "--clip-batch", "8",
            "--nproc", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run([sys.executable, "benchmarks/halc_scenes.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    ok(proc)
    result = json.loads(out.read_text())
    assert set(result["summary"]) == {"greedy", "beam", "vcd", "halc"}
    for row in result["summary"].values():
        assert set(row) == {"chair_s", "chair_i", "recall", "pope_f1", "time_ratio_vs_greedy"}
    assert result["summary"]["greedy"]["time_ratio_vs_greedy"] == 1.0 and set(result["reweighted_summary"]) == {
        "greedy", "halc"}  # fmt: skip
    seed0 = result["runs"]["mle/seed0"]
    assert seed0["greedy_batched"]["captions"] == seed0["greedy"]["captions"]  # batching changes the time only
    assert result["ablations_seed0"]["halc_sequential"]["same_captions_as_halc"] is True
    cost = result["cost_model_seed0"]["halc"]
    assert 0 < cost["grounded_fraction"] <= 1 and abs(sum(cost["share_of_halc_time"].values()) - 1) < 1e-9
