"""Step time of visual-dependence token re-weighting against plain MLE (issue 11; the seed reports ~20%).

    .venv/bin/python benchmarks/lvlm_reweight_overhead.py
    .venv/bin/python benchmarks/lvlm_reweight_overhead.py --steps 4 --out /tmp/overhead.json  # smoke

The demo's model and LoRA instruct stage (configs/lvlm/demo.yaml: 64 px, patch 8, ViT 2x128, Llama 2x128, LoRA r 16
on every linear layer of the language model + the projector) on 2 real gloo ranks with DeepSpeed ZeRO-2, one
thread each, the trainer's own micro-step (framework/trainers/lvlm.py). MLE and re-weighted optimizer steps
alternate in the same processes on the same batches (so drift of the machine hits both); each step's time is the
slowest rank's. A re-weighted step adds two no-grad forwards in eval mode (clean and noised image) and the weights.
Writes benchmarks/results/lvlm_reweight_overhead.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from framework.config import load_job_config  # noqa: E402
from framework.data.lvlm.dataset import load_train_set, micro_rows, step_rows  # noqa: E402
from framework.data.lvlm.scenes import build_scene_world  # noqa: E402
from framework.data.lvlm.tokenizer import scene_tokenizer  # noqa: E402
from framework.distributed.engine_factory import build_engine  # noqa: E402
from framework.distributed.env import read_env  # noqa: E402
from framework.distributed.spawn import run_multiprocess  # noqa: E402
from framework.trainers.common import check_results_or_exit, result_header, write_result  # noqa: E402
from framework.trainers.lvlm import build_model, micro_step, special_ids, train_turns  # noqa: E402

CONFIG = REPO / "configs" / "lvlm" / "demo.yaml"


def _worker(scenes: str, steps: int, warmup: int) -> dict[str, list[float]]:
    cfg = load_job_config(CONFIG, [f"data.scenes={scenes}", "train.init_from=null", "loss.kind=reweighted"])
    env = read_env("cpu")
    tok = scene_tokenizer()
    ids = special_ids(tok)
    data = load_train_set(scenes, tok, image_size=cfg.model.image_size, image_tokens=cfg.model.image_tokens,
                          max_length=cfg.data.max_length, turns=train_turns(cfg))  # fmt: skip
    engine = build_engine(build_model(cfg, tok), cfg.engine, cfg.optim, micro_batch_size=cfg.train.batch_size,
                          max_steps=2 * (steps + warmup), env=env)  # fmt: skip
    B, W = cfg.train.batch_size, env.world_size
    engine.train()
    times: dict[str, list[float]] = {"mle": [], "reweighted": []}
    for k in range(steps + warmup):
        rows = step_rows(list(range(len(data))), k, B * W, seed=0)
        for kind in ("mle", "reweighted"):  # the same batch both ways
            dist.barrier()
            t0 = time.perf_counter()
            micro_step(engine, data, micro_rows(rows, 0, env.rank, W, B), cfg=cfg, eos_id=ids["eos_token_id"],
                       pad_id=ids["pad_token_id"], step=k, n_tokens=data.supervised_tokens(rows),
                       reweight=kind == "reweighted")  # fmt: skip
            assert engine.step()
            seconds = torch.tensor(time.perf_counter() - t0, dtype=torch.float64)
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
            if k >= warmup:
                times[kind].append(float(seconds))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lvlm_reweight_overhead.json"))
    args = parser.parse_args(argv)
    check_results_or_exit(parser, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        build_scene_world(tmp, 256, 8, seed=0, progress=False)
        times = run_multiprocess(_worker, 2, tmp, args.steps, args.warmup, timeout_s=1800)[0]
    med = {k: statistics.median(v) for k, v in times.items()}
    result: dict[str, Any] = {
        **result_header("lvlm_reweight_overhead"),
        "world_size": 2, "zero_stage": 2, "config": str(CONFIG.relative_to(REPO)), "timed_steps": args.steps,
        "median_step_seconds": med, "mean_step_seconds": {k: statistics.fmean(v) for k, v in times.items()},
        "reweight_step_time_ratio": med["reweighted"] / med["mle"], "step_seconds": times,
    }  # fmt: skip
    write_result(args.out, result)
    print(f"MLE step {med['mle'] * 1e3:.1f} ms, re-weighted step {med['reweighted'] * 1e3:.1f} ms (median of "
          f"{args.steps}, 2 ranks ZeRO-2): ratio {result['reweight_step_time_ratio']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
