"""Ranking training throughput on this CPU: TorchRec-sharded (torchrun, N ranks) vs plain PyTorch, ICR/UCR/Hybrid.

    .venv/bin/python benchmarks/ranking_throughput.py                     # defaults: 80 steps, 2 ranks, attention
    .venv/bin/python benchmarks/ranking_throughput.py --quick --formulations ucr --out /tmp/x.json   # smoke test
    .venv/bin/python benchmarks/ranking_throughput.py --formulations ucr sharding.sharding_type=column_wise  # what-if

Per formulation, on ``configs/ranking/din_throughput.yaml`` (history <= 100, dim 64, table_wise sharding):

1. sharded: ``launch.train`` under torchrun with ``--nproc`` ranks (OMP_NUM_THREADS = cores / nproc each).
2. plain: the same model with ``embedding_backend="torch"`` (one ``nn.EmbeddingBag(sparse=True)`` per table) in
   this process, no torch.distributed, on the same global batch (train.global_batch_size); the config's optimizers
   (the sparse one is what the sharded run fuses into its backward; adagrad + adam in din_throughput.yaml).

Both sides are timed over the same steps ``warmup+1 .. warmup+steps`` including batch construction (see METHOD).
Goal (issue): sharded >= 1k examples/s and sharded >= 0.9x plain. Writes ``benchmarks/results/ranking_throughput.json``.
Run it on an otherwise idle machine: the JSON records how many cores other processes used during each sample.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from framework.config import load_job_config  # noqa: E402
from framework.data.ranking.batches import RankingData  # noqa: E402
from framework.distributed.torchrec_sharding import (  # noqa: E402
    SPARSE_PREFIX,
    dense_optimizer_factory,
    sparse_optimizer_spec,
)
from framework.models.ranking.model import build_ranking_model  # noqa: E402
from framework.trainers.common import (  # noqa: E402
    DirtyTreeError,
    Prefetcher,
    check_results_path,
    cpu_model,
    cpu_seconds,
    git_commit,
    others_cores,
    write_result,
)
from framework.trainers.ranking import build_data, loss_fn  # noqa: E402
from launch.cli import torchrun_command  # noqa: E402

CONFIG = REPO / "configs" / "ranking" / "din_throughput.yaml"
FORMULATIONS = ("icr", "ucr", "hybrid")
CORES = os.cpu_count() or 1
GOAL_EXAMPLES_PER_S = 1000.0
GOAL_RATIO = 0.9
QUIET_OTHERS_CORES = 0.25  # a sample with more CPU used by other processes than this is marked as disturbed

METHOD = (
    "Throughput = global examples per second over training steps warmup+1..warmup+steps (the first `warmup` steps "
    "excluded on both sides), each step including batch construction (RankingData.batches), forward, loss, "
    "backward and optimizer step; start-up, evaluation and checkpointing are excluded. "
    "Sharded: one torchrun run of warmup+steps steps (launch.train, gloo, OMP_NUM_THREADS=cores/nproc per rank) "
    "with TensorBoard scalars logged at steps warmup and warmup+steps; the trainer logs train/examples_per_s = "
    "cumulative global examples/s of rank 0 since its loop started, so elapsed(k) = k*global_batch/rate(k) and "
    "steady-state throughput = steps*global_batch / (elapsed(warmup+steps) - elapsed(warmup)). "
    "`sharded_samples_incl_warmup` is metrics.json train_examples_per_s (all steps, first included). "
    "Plain: same config and overrides, build_ranking_model(embedding_backend='torch') in the benchmark process "
    "without torch.distributed, global batch = train.global_batch_size as rank 0 of world 1, "
    "the config's optimizers (sparse_optimizer_spec / dense_optimizer_factory: Adagrad + Adam here) on sparse "
    "EmbeddingBag grads and dense params, timed with "
    "perf_counter around steps warmup+1..warmup+steps of the same data.batches generator behind the trainer's "
    "Prefetcher (train.prefetch_batches background batch construction, as on the sharded side), once per thread count "
    "in `plain_threads` (all cores, and 1: with other load on the machine, OpenMP intra-op threads can make the "
    "all-cores run several times slower than one thread); the baseline is the fastest plain sample. "
    "Each side is measured `repeats` times, sharded and plain interleaved; the best sample of each side is "
    "reported (all samples are listed), because other work on a shared machine only ever slows a run down. "
    "`others_cores` per sample = CPU cores used on average by processes other than the benchmark during that "
    "sample (/proc/stat busy time minus the benchmark's own and its children's CPU time, over the sample's wall "
    "time; for sharded samples the window is the whole torchrun run): near 0 means the machine was quiet; "
    "`reported_samples_quiet` is true when every reported (best) sample stayed below 0.25. "
    "ratio = best sharded / best plain."
)


def overrides_for(formulation: str, run_dir: Path, total_steps: int, warmup: int, extra: list[str]) -> list[str]:
    return [
        f"model.formulation={formulation}", f"train.run_dir={run_dir}", "train.resume=never", "train.progress=false",
        # Scalars at every multiple of gcd(warmup, total): steps `warmup` and `total` are both logged.
        f"train.max_steps={total_steps}", "train.tensorboard=true", f"train.log_every={math.gcd(warmup, total_steps)}",
        *extra,
    ]  # fmt: skip


def tb_examples_per_s(tb_dir: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/examples_per_s")}


def run_sharded(nproc: int, overrides: list[str], run_dir: Path, warmup: int, steps: int) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, CORES // nproc)))
    cmd = torchrun_command(nproc, CONFIG, overrides)
    start = cpu_seconds()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    others = others_cores(start)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
        raise SystemExit(f"sharded run failed (exit {proc.returncode}): {' '.join(cmd)}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    G, total = metrics["global_batch"], metrics["steps"]
    if total != warmup + steps:
        raise SystemExit(f"the run stopped after {total} steps (one epoch of global batch {G}): lower --steps")
    rate = tb_examples_per_s(run_dir / "tb")
    elapsed = {k: k * G / rate[k] for k in (warmup, total)}
    return {
        "examples_per_s": steps * G / (elapsed[total] - elapsed[warmup]),
        "examples_per_s_incl_warmup": metrics["train_examples_per_s"],
        "others_cores": others,
        "global_batch": G,
        "steps": total,
        "plan": metrics["plan"],
    }


def run_plain(cfg: Any, data: RankingData, global_batch: int, warmup: int, steps: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    model = build_ranking_model(
        cfg.model, data.num_embeddings, data.task_names, cfg.data.num_time_buckets, embedding_backend="torch"
    )
    # The same optimizers the sharded run uses (its sparse one fused into the TBE backward), built from the config.
    sparse_cls, sparse_kwargs = sparse_optimizer_spec(cfg.optim)
    sparse_opt = sparse_cls(model.sparse_arch.parameters(), **sparse_kwargs)
    dense_opt = dense_optimizer_factory(cfg.optim)(
        [p for n, p in model.named_parameters() if not n.startswith(SPARSE_PREFIX)]
    )
    if data.num_batches("train", global_batch, 1) < warmup + steps:
        raise SystemExit(f"train split has fewer than {warmup + steps} global batches of {global_batch}")
    source = data.batches("train", batch_size=global_batch, rank=0, world_size=1, epoch=0)
    model.train()
    start = cpu_seconds()
    # The trainer's input pipeline, background batch construction included, so both sides build batches alike.
    with Prefetcher(source, cfg.train.prefetch_batches) as batches:
        for i in range(warmup + steps):
            if i == warmup:
                start = cpu_seconds()
            batch = next(batches)
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            loss = loss_fn(model(batch.sparse, batch.time_buckets), batch)  # world of 1: mean over the global batch
            loss.backward()
            sparse_opt.step()
            dense_opt.step()
        elapsed = time.perf_counter() - start[0]
    return {"examples_per_s": steps * global_batch / elapsed, "threads": threads, "others_cores": others_cores(start)}


def best(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return max(samples, key=lambda s: s["examples_per_s"])


def measure(
    f: str, args: argparse.Namespace, extra: list[str], tmp: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    total = args.warmup + args.steps
    sharded, plain = [], []
    cfg = data = None
    for r in range(args.repeats):  # interleaved, so a busy spell on the machine hits both sides alike
        run_dir = tmp / f"{f}_{r}"
        overrides = overrides_for(f, run_dir, total, args.warmup, extra)
        log(f"[{f}] {r + 1}/{args.repeats}: sharded, {args.nproc} ranks, {total} steps")
        sharded.append(run_sharded(args.nproc, overrides, run_dir, args.warmup, args.steps))
        if data is None:
            cfg = load_job_config(CONFIG, overrides)
            data = build_data(cfg)
        for threads in args.plain_threads:
            log(f"[{f}] {r + 1}/{args.repeats}: plain, {threads} thread(s), {total} steps")
            plain.append(run_plain(cfg, data, cfg.train.global_batch_size, args.warmup, args.steps, threads))
    s, p = best(sharded), best(plain)
    ratio = s["examples_per_s"] / p["examples_per_s"]
    return {
        "sharded_examples_per_s": s["examples_per_s"],
        "plain_examples_per_s": p["examples_per_s"],
        "plain_threads": p["threads"],
        "others_cores_of_reported": {"sharded": s["others_cores"], "plain": p["others_cores"]},
        "ratio": ratio,
        "meets_1k": s["examples_per_s"] >= GOAL_EXAMPLES_PER_S,
        "meets_0.9x": ratio >= GOAL_RATIO,
        "sharded_samples": [{k: x[k] for k in ("examples_per_s", "others_cores")} for x in sharded],
        "sharded_samples_incl_warmup": [x["examples_per_s_incl_warmup"] for x in sharded],
        "plain_samples": plain,
        "steps": {"warmup": args.warmup, "timed": args.steps, "total": s["steps"]},
        "global_batch": s["global_batch"],
        "plan": s["plan"],
        "overrides": [o for o in overrides if not o.startswith("train.run_dir=")],
    }


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    header = ("formulation", "sharded ex/s", "plain ex/s", "ratio", ">=1k", ">=0.9x")
    lines = [" | ".join(f"{h:>12}" for h in header), "-" * (15 * len(header))]
    for f, r in rows.items():
        cells = (f, f"{r['sharded_examples_per_s']:,.0f}", f"{r['plain_examples_per_s']:,.0f}", f"{r['ratio']:.2f}",
                 str(r["meets_1k"]), str(r["meets_0.9x"]))  # fmt: skip
        lines.append(" | ".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formulations", nargs="+", choices=FORMULATIONS, default=list(FORMULATIONS))
    parser.add_argument("--pooling", choices=("attention", "sum", "mean"), default="attention")
    parser.add_argument("--steps", type=int, default=80, help="timed steps per sample (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps per sample")
    parser.add_argument("--nproc", type=int, default=2, help="ranks of the sharded run")
    parser.add_argument("--repeats", type=int, default=2, help="samples per side; the best one is reported")
    parser.add_argument("--plain-threads", type=int, nargs="+", default=sorted({CORES, 1}, reverse=True),
                        help="intra-op thread counts tried for the plain baseline; the fastest is the baseline")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 steps, 1 warm-up, small synthetic data")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ranking_throughput.json")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides, applied to both sides")
    args = parser.parse_args(argv)
    try:
        check_results_path(args.out)  # before minutes of benchmarking, not after
    except DirtyTreeError as e:
        parser.error(str(e))
    if args.quick:
        args.steps, args.warmup, args.repeats, args.plain_threads = 3, 1, 1, [CORES]
    if min(args.steps, args.warmup, args.nproc, args.repeats, *args.plain_threads) < 1:
        parser.error("--steps, --warmup, --nproc, --repeats and --plain-threads must be >= 1")

    # Evaluation runs after the clock stops; a small one keeps the wall time down without touching the measurement.
    extra = [f"model.pooling={args.pooling}", "train.eval_max_examples=2048"]
    if args.quick:
        extra.append("data.synthetic.num_events=20000")
    extra += args.overrides
    t_start, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ranking_throughput_") as tmp:
        rows = {f: measure(f, args, extra, Path(tmp), lambda m: print(m, flush=True)) for f in args.formulations}
    print(format_table(rows))
    busiest = max(c for r in rows.values() for c in r["others_cores_of_reported"].values())
    if not busiest < QUIET_OTHERS_CORES:
        print(f"WARNING: other processes used {busiest:.2f} cores during a reported sample: numbers are disturbed")
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"cpu: {cpu_model()}",
        "cores": CORES,
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "command": [Path(sys.executable).name, *sys.argv],
        "config": str(CONFIG.relative_to(REPO)),
        "nproc": args.nproc,
        "pooling": args.pooling,
        "quick": args.quick,
        "method": METHOD,
        "goals": {
            "sharded_examples_per_s_min": GOAL_EXAMPLES_PER_S,
            "ratio_min": GOAL_RATIO,
            "meets_1k": all(r["meets_1k"] for r in rows.values()),
            "meets_0.9x": all(r["meets_0.9x"] for r in rows.values()),
        },
        "formulations": rows,
        # Other work on the machine slows both sides (the all-cores plain run most): see `others_cores` per sample.
        "reported_samples_quiet": busiest < QUIET_OTHERS_CORES,
        "loadavg_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_result(args.out, result)
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
