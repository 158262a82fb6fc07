"""CLIP training-step time per engine at world size 1: DDP (plain) vs DeepSpeed ZeRO-0/1/2/3 (fp32), and RankCLIP vs
CLIP loss on the plain backend.

    .venv/bin/python benchmarks/zero_step.py                          # mid-size CLIP at 96 px, batch 32
    .venv/bin/python benchmarks/zero_step.py --rn50 --batch 4          # the real RN50 sizes at 224 px
    .venv/bin/python benchmarks/zero_step.py --tiny --warmup 1 --steps 2 --rounds 1 --out /tmp/x.json   # smoke

What it answers: the bookkeeping cost of each engine relative to plain DDP on the same model and batch. With one
rank there is nothing to partition or communicate, so the ratios isolate the engine machinery (flat buffers and
copies at ZeRO-1/2, parameter gather/release hooks at ZeRO-3, DeepSpeed's step logic), which is the floor of what a
multi-rank run pays on top of its communication. They are not a prediction of multi-GPU scaling.
Writes ``benchmarks/results/zero_step.json`` (``--out``) with the environment and git commit.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from framework.config.schema import ClipOptimConfig, EngineConfig  # noqa: E402
from framework.distributed.collectives import gather_features  # noqa: E402
from framework.distributed.engine import Engine  # noqa: E402
from framework.distributed.engine_factory import build_engine  # noqa: E402
from framework.distributed.env import read_env  # noqa: E402
from framework.distributed.spawn import run_multiprocess  # noqa: E402
from framework.losses.contrastive import RankCLIPLossConfig, clip_loss, rankclip_loss  # noqa: E402
from framework.models.clip.model import CLIP, CLIPConfig, tiny_clip_config  # noqa: E402
from framework.trainers.common import (  # noqa: E402
    DirtyTreeError,
    check_results_path,
    cpu_model,
    environment_info,
    git_commit,
    write_result,
)

# (name, backend, zero stage, loss); the first is the baseline of every ratio.
VARIANTS = [
    ("ddp", "ddp", 0, "rankclip"),
    ("zero0", "deepspeed", 0, "rankclip"),
    ("zero1", "deepspeed", 1, "rankclip"),
    ("zero2", "deepspeed", 2, "rankclip"),
    ("zero3", "deepspeed", 3, "rankclip"),
    ("ddp_clip", "ddp", 0, "clip"),
]
PLAIN = "ddp"

METHOD = (
    "Every (round, variant) runs in a fresh process (framework.distributed.spawn.run_multiprocess with one rank: "
    "torch.distributed initialized as a world of one, gloo, CPU, intra-op threads reset to `torch_threads`), because "
    "DeepSpeed's ZeRO-3 leaves process-global patches behind (e.g. of torch.nn.functional.linear) that slowed later "
    "plain DDP steps in the same process by ~20%. Each builds a fresh model (seed 0) behind build_engine (fp32, "
    "grad_accum_steps=1, grad_clip=1.0, AdamW with the default ClipOptimConfig) and trains on one fixed synthetic "
    "batch (random images, tokens and end-of-text positions). Step time = perf_counter around engine forward + loss "
    "on gather_features outputs + engine.backward + engine.step, per step, after `warmup` untimed steps. Variants "
    "run one after another in `rounds` rounds, so that load from other processes on a shared machine spreads over all "
    "of them; mean_s and median_s are over every timed step of every round. ratio_vs_plain = mean_s / mean_s of ddp "
    "(rankclip loss) from the same run; rankclip_vs_clip = mean_s(ddp, rankclip) / mean_s(ddp, clip). DeepSpeed's "
    "ZeRO-3 runs with its default stage3_param_persistence_threshold (parameters below 1e5 elements stay whole), as a "
    "real run would."
)


def mid_clip_config() -> CLIPConfig:
    """A mid-size CLIP (same architecture as RN50, narrower and at 96 px): a step takes a fraction of a second."""
    return CLIPConfig(image_size=96, vision_layers=[2, 2, 2, 2], vision_width=32, vision_heads=8, embed_dim=256,
                      vocab_size=4096, context_length=32, text_width=256, text_layers=4, text_heads=4)  # fmt: skip


def synthetic_batch(cfg: CLIPConfig, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)
    tokens = torch.randint(1, cfg.vocab_size, (batch, cfg.context_length), generator=g)
    eot = torch.randint(cfg.context_length // 2, cfg.context_length, (batch,), generator=g)
    return images, tokens, eot


def loss_fn(kind: str, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    img, txt = gather_features(img), gather_features(txt)
    if kind == "clip":
        return clip_loss(img, txt, scale)
    return rankclip_loss(img, txt, scale, RankCLIPLossConfig())["loss"]


def time_steps(engine: Engine, batch: tuple[torch.Tensor, ...], kind: str, warmup: int, steps: int) -> list[float]:
    engine.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        img, txt, scale = engine(*batch)
        engine.backward(loss_fn(kind, img, txt, scale))
        engine.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def measure(cfg: CLIPConfig, batch_size: int, backend: str, stage: int, kind: str, warmup: int, steps: int,
            threads: int) -> list[float]:  # fmt: skip
    """One variant's step times, run inside a fresh single-rank process (see METHOD)."""
    torch.set_num_threads(threads)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its start-up INFO lines would drown the table
    env = read_env("cpu")
    torch.manual_seed(0)
    engine = build_engine(
        CLIP(cfg), EngineConfig(backend=backend, zero_stage=stage, device="cpu"), ClipOptimConfig(),  # type: ignore[arg-type]
        micro_batch_size=batch_size, max_steps=100_000, env=env,
    )  # fmt: skip
    return time_steps(engine, synthetic_batch(cfg, batch_size), kind, warmup, steps)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--rn50", action="store_true", help="real RN50 CLIP sizes at 224 px (slow on CPU)")
    size.add_argument("--tiny", action="store_true", help="the test-size CLIP at 32 px (smoke test)")
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default 32; 4 with --rn50)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per round and variant")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and variant")
    parser.add_argument("--rounds", type=int, default=2, help="passes over all variants")
    parser.add_argument("--variants", nargs="+", choices=[v[0] for v in VARIANTS], default=[v[0] for v in VARIANTS],
                        help=f"subset to run ({PLAIN}, the baseline, is always included)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "zero_step.json")
    args = parser.parse_args(argv)
    try:
        check_results_path(args.out)  # before minutes of benchmarking, not after
    except DirtyTreeError as e:
        parser.error(str(e))
    if min(args.warmup + 1, args.steps, args.rounds) < 1:
        parser.error("--steps and --rounds must be >= 1, --warmup >= 0")

    model_name = "rn50" if args.rn50 else "tiny" if args.tiny else "mid"
    cfg = CLIPConfig() if args.rn50 else tiny_clip_config() if args.tiny else mid_clip_config()
    batch_size = args.batch or (4 if args.rn50 else 32)
    threads = torch.get_num_threads()
    selected = [v for v in VARIANTS if v[0] == PLAIN or v[0] in args.variants]
    times: dict[str, list[float]] = {name: [] for name, *_ in selected}
    load_start = os.getloadavg()
    for _ in range(args.rounds):
        for name, backend, stage, kind in selected:
            [samples] = run_multiprocess(
                measure, 1, cfg, batch_size, backend, stage, kind, args.warmup, args.steps, threads, timeout_s=3600
            )
            times[name] += samples
    load_end = os.getloadavg()

    plain_mean = statistics.fmean(times[PLAIN])
    variants = {}
    for name, backend, stage, kind in selected:
        mean = statistics.fmean(times[name])
        variants[name] = {
            "backend": backend, "zero_stage": stage, "loss": kind, "mean_s": mean,
            "median_s": statistics.median(times[name]), "min_s": min(times[name]),
            "ratio_vs_plain": mean / plain_mean, "samples_s": times[name],
        }  # fmt: skip
    n_params = sum(p.numel() for p in CLIP(cfg).parameters())
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"cpu: {cpu_model()}",
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "environment": environment_info(),
        "git_commit": git_commit(REPO),
        "command": ["python", "benchmarks/zero_step.py", *(argv if argv is not None else sys.argv[1:])],
        "model": {"name": model_name, "params": n_params, **asdict(cfg)},
        "batch": batch_size,
        "precision": "fp32",
        "warmup": args.warmup,
        "steps": args.steps,
        "rounds": args.rounds,
        "load_avg_1min": {"start": load_start[0], "end": load_end[0]},
        "method": METHOD,
        "variants": variants,
        "ratios_vs_plain": {name: v["ratio_vs_plain"] for name, v in variants.items()},
        "rankclip_vs_clip": plain_mean / variants["ddp_clip"]["mean_s"] if "ddp_clip" in variants else None,
    }
    write_result(args.out, result)

    print(f"CLIP {model_name} ({n_params / 1e6:.1f}M params), batch {batch_size}, fp32, world size 1, "
          f"{threads} threads, {args.rounds}x{args.steps} timed steps")  # fmt: skip
    print(f"{'variant':<10} {'loss':<9} {'mean ms':>9} {'median ms':>10} {'vs ddp':>7}")
    for name, v in variants.items():
        print(f"{name:<10} {v['loss']:<9} {1e3 * v['mean_s']:9.1f} {1e3 * v['median_s']:10.1f} "
              f"{v['ratio_vs_plain']:7.2f}")  # fmt: skip
    if result["rankclip_vs_clip"] is not None:
        print(f"rankclip / clip step time (ddp): {result['rankclip_vs_clip']:.3f}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
