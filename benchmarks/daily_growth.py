"""Model growth and NCE over recurring daily training: ICR vs UCR vs Hybrid (grow mode) and ICR with hashing,
each trained day after day at 2 ranks (`scalefirst daily --catch-up`) on the same synthetic production logs.

    .venv/bin/python benchmarks/daily_growth.py                        # 31 days, the world of configs/daily/base.yaml
    .venv/bin/python benchmarks/daily_growth.py --days 4 --events-per-day 20000 --out /tmp/x.json --figures /tmp/f

Also measured, in the same run: the daily job's training examples/s with the featurized-log reader feeding each step
vs the same model and steps on batches built beforehand in memory (2 ranks, UCR, one day): the loader must not be
the bottleneck (goal >= 0.9x).

Writes ``benchmarks/results/daily_growth.json`` (``--out``; every day's metrics of every job, the summary) and the
``scalefirst report`` figures + summary.md into ``benchmarks/results/daily_growth/`` (``--figures``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from framework.trainers.common import (  # noqa: E402
    DirtyTreeError,
    check_results_path,
    result_header,
    write_result,
)

JOBS = {  # name -> (config, extra overrides)
    "icr": ("configs/daily/icr.yaml", []),
    "ucr": ("configs/daily/ucr.yaml", []),
    "hybrid": ("configs/daily/hybrid.yaml", []),
    "icr_hash": ("configs/daily/icr.yaml", ["model.hash_size.item=20000"]),
}
WARMUP_DAYS = 7
"""UCR's size is compared with its size on the first day after this many days (the user set fills up first)."""


def run_job(name: str, root: Path, logs: Path, overrides: list[str]) -> dict[str, Any]:
    config, extra = JOBS[name]
    cmd = [sys.executable, "-m", "launch.cli", "daily", "--config", config, "--catch-up", "--nproc", "2",
           f"logs.root={logs}", f"train.run_dir={root / name}", "train.progress=false", *extra, *overrides]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    history = [json.loads(x) for x in (root / name / "history.jsonl").read_text().splitlines()]
    return {"command": " ".join(cmd[1:]), "wall_seconds": time.perf_counter() - t0, "days": history}


def loader_vs_memory(logs: str, day: str, steps: int) -> dict[str, float]:
    """One rank's examples/s over ``steps`` steps: the daily job's input path (featurized reader + batch building,
    prefetched in a background thread) vs the same batches built beforehand in memory."""
    from framework.config.schema import ModelConfig, OptimConfig
    from framework.data.logs.batches import make_log_batch
    from framework.data.logs.features import FeatureReader, featurize_logs
    from framework.data.logs.history import HistoryConfig, HistoryState
    from framework.data.logs.ids import TableIds
    from framework.data.logs.reader import rank_slices
    from framework.data.logs.schema import LogSchema
    from framework.distributed.env import read_env
    from framework.distributed.torchrec_sharding import shard_model
    from framework.jobs.daily import day_batches
    from framework.models.ranking.model import build_ranking_model
    from framework.trainers.common import Prefetcher
    from framework.trainers.ranking import train_step

    env = read_env("cpu")
    schema, B = LogSchema(), 1024
    d = datetime.date.fromisoformat(day)
    feats = Path(logs).parent / f"features_rank{env.rank}"
    state = HistoryState(HistoryConfig(), schema.positives)
    featurize_logs(logs, d, 0, state, feats, schema)  # each rank its own copy: no shared files to wait for
    reader = FeatureReader(feats, d, schema, ("click",))
    ids = {"user": TableIds("user", "grow")}
    ids["user"].observe(reader.column("user_id"))
    cfg = ModelConfig(formulation="ucr", embedding_dim=32, hash_size={"item": None, "user": None}, cross_layers=1,
                      head_hidden=[64])  # fmt: skip
    torch.manual_seed(0)
    model = build_ranking_model(cfg, {"user": ids["user"].num_embeddings}, schema.labels, 32)
    sm = shard_model(model, tables={"user": ids["user"].num_embeddings}, embedding_dim=32, sharding_type="table_wise",
                     optim=OptimConfig(), env=env)  # fmt: skip
    stop = min(reader.num_rows, (3 + steps) * B)
    slices = list(rank_slices(0, stop, B, env.rank, env.world_size))

    def batch(lo: int, hi: int):
        return make_log_batch(reader.read(lo, hi), formulation="ucr", ids=ids, labels=schema.labels, channel="click",
                              num_time_buckets=32, pad_to=math.ceil(B / env.world_size))  # fmt: skip

    for _, lo, hi in slices[:3]:  # warm-up
        train_step(sm, batch(lo, hi))
    timed = slices[3:]
    t0 = time.perf_counter()
    with Prefetcher(day_batches(batch, 3 * B, stop, B, env), 2) as batches:  # the daily job's own input path
        for _, b in batches:
            train_step(sm, b)
    with_reader = time.perf_counter() - t0
    prebuilt = [batch(lo, hi) for _, lo, hi in timed]
    t0 = time.perf_counter()
    for b in prebuilt:
        train_step(sm, b)
    in_memory = time.perf_counter() - t0
    shutil.rmtree(feats, ignore_errors=True)
    return {"reader_examples_per_s": len(timed) * B / with_reader, "memory_examples_per_s": len(timed) * B / in_memory}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, default=31)
    p.add_argument("--events-per-day", type=int, default=100_000)
    p.add_argument("--num-users", type=int, default=3_000)
    p.add_argument("--new-items-per-day", type=int, default=400)
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    p.add_argument("--loader-steps", type=int, default=40)
    p.add_argument("--root", default=None, help="where logs and jobs go (default: a temporary directory)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "daily_growth.json"))
    p.add_argument("--figures", default=str(REPO / "benchmarks" / "results" / "daily_growth"))
    p.add_argument("overrides", nargs="*", help="extra job config overrides, e.g. optim.sparse_lr=0.1")
    args = p.parse_args(argv)
    try:
        check_results_path(args.out)
        check_results_path(Path(args.figures) / "summary.md")
    except DirtyTreeError as e:
        print(e, file=sys.stderr)
        return 2
    from framework.data.logs.generator import WorldConfig, generate_logs
    from framework.distributed.spawn import run_multiprocess
    from framework.jobs.report import write_report

    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory() if args.root is None else None
    root = Path(args.root or tmp.name)  # type: ignore[union-attr]
    world = WorldConfig(num_users=args.num_users, events_per_day=args.events_per_day,
                        new_items_per_day=args.new_items_per_day)  # fmt: skip
    t0 = time.perf_counter()
    days = generate_logs(root / "logs", args.days, world, progress=True)
    gen_seconds = time.perf_counter() - t0
    jobs = {}
    for name in args.jobs:
        print(f"=== {name}: {args.days} days ===", flush=True)
        jobs[name] = run_job(name, root, root / "logs", args.overrides)
        last = jobs[name]["days"][-1]
        print(f"{name}: {last['params']['total']:,} params on the last day, {jobs[name]['wall_seconds']:.0f} s")
    print("=== loader vs in-memory batches (UCR, 2 ranks) ===", flush=True)
    speeds = run_multiprocess(loader_vs_memory, 2, str(root / "logs"), days[min(5, len(days) - 1)].isoformat(),
                              args.loader_steps, timeout_s=3600)  # fmt: skip
    reader_rate = sum(s["reader_examples_per_s"] for s in speeds) / len(speeds) * 2
    memory_rate = sum(s["memory_examples_per_s"] for s in speeds) / len(speeds) * 2
    report = write_report([root / n for n in args.jobs], args.figures)

    def params(name: str, index: int) -> int:
        return jobs[name]["days"][index]["params"]["total"]

    def last_nce(name: str) -> float | None:
        ev = [d["eval"] for d in jobs[name]["days"] if d["eval"]]
        return ev[-1]["tasks"][ev[-1]["main_task"]]["nce"] if ev else None

    warm = min(WARMUP_DAYS, args.days - 1)
    summary = {
        "days": args.days,
        "icr_params_last_over_first": params("icr", -1) / params("icr", 0) if "icr" in jobs else None,
        "ucr_params_last_over_warmup": params("ucr", -1) / params("ucr", warm) if "ucr" in jobs else None,
        "icr_over_ucr_params_last_day": params("icr", -1) / params("ucr", -1) if {"icr", "ucr"} <= set(jobs) else None,
        "nce_last_day": {n: last_nce(n) for n in ("icr", "ucr", "hybrid") if n in jobs},
        "loader_over_in_memory": reader_rate / memory_rate,
        "icr_hash_collision_rate_first_last": (
            [jobs["icr_hash"]["days"][i]["ids"]["item"]["collision_rate"] for i in (0, -1)]
            if "icr_hash" in jobs
            else None
        ),
    }
    result = {
        **result_header("daily_growth"),
        "world": {f: str(getattr(world, f)) for f in world.__dataclass_fields__},
        "generator_seconds": gen_seconds,
        "warmup_days": warm,
        "summary": summary,
        "loader": {"reader_examples_per_s": reader_rate, "memory_examples_per_s": memory_rate, "per_rank": speeds},
        "report": report,
        "jobs": jobs,
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_result(args.out, result)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} and {args.figures}/ ({result['wall_seconds']:.0f} s)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
