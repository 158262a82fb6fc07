"""ICR vs UCR vs Hybrid on MovieLens (UCR chapter, table 3.1 protocol), 2 gloo ranks through torchrun, >= 3 seeds.

    python benchmarks/ranking_movielens.py --data ../shared/data/ml-100k

Writes benchmarks/results/ranking_movielens.json (mean/std test AUC per formulation, every run, the exact
command, the config and the git commit) and prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from framework.trainers.common import (  # noqa: E402
    DirtyTreeError,
    check_results_path,
    environment_info,
    git_commit,
    write_result,
)
from launch.cli import torchrun_command  # noqa: E402

CONFIG = REPO / "configs" / "ranking" / "movielens.yaml"


def run_one(args: argparse.Namespace, formulation: str, seed: int) -> dict:
    run_dir = Path(args.run_root) / f"{formulation}_seed{seed}"
    overrides = [
        f"data.path={Path(args.data).resolve()}",
        f"model.formulation={formulation}",
        f"train.seed={seed}",
        f"train.run_dir={run_dir}",
        "train.resume=never",
        "train.progress=false",
        *args.overrides,
    ]
    cmd = torchrun_command(args.nproc, CONFIG, overrides)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.nproc))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"{formulation} seed {seed} failed with exit code {proc.returncode}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "formulation": formulation,
        "seed": seed,
        "test_auc": metrics["test"]["like/auc"],
        "test_nce": metrics["test"]["like/nce"],
        "test_examples": metrics["test"]["num_examples"],
        "steps": metrics["steps"],
        "train_examples_per_s": metrics["train_examples_per_s"],
        "wall_s": time.perf_counter() - t0,
        "config": metrics["config"],
        "num_embeddings": metrics["num_embeddings"],
        "collisions": metrics["collisions"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ml-100k directory (u.data) or ml-20m/25m (ratings.csv)")
    p.add_argument("--formulations", nargs="+", default=["icr", "ucr", "hybrid"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--run-root", default=str(REPO / "runs" / "bench_movielens"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ranking_movielens.json"))
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = p.parse_args(argv)
    try:
        check_results_path(args.out)  # before minutes of benchmarking, not after
    except DirtyTreeError as e:
        p.error(str(e))
    if len(args.seeds) < 3:
        print("note: fewer than 3 seeds; the README table uses >= 3", file=sys.stderr)

    runs = []
    for formulation in args.formulations:
        for seed in args.seeds:
            r = run_one(args, formulation, seed)
            print(
                f"{formulation:7s} seed {seed}: test AUC {r['test_auc']:.4f}  NCE {r['test_nce']:.4f}  ({r['wall_s']:.0f}s)",
                flush=True,
            )
            runs.append(r)

    summary = {}
    for formulation in args.formulations:
        aucs = [r["test_auc"] for r in runs if r["formulation"] == formulation]
        nces = [r["test_nce"] for r in runs if r["formulation"] == formulation]
        summary[formulation] = {
            "auc_mean": statistics.fmean(aucs),
            "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
            "nce_mean": statistics.fmean(nces),
            "nce_std": statistics.stdev(nces) if len(nces) > 1 else 0.0,
            "seeds": len(aucs),
        }
    config = runs[0]["config"]
    for r in runs:
        del r["config"]
    payload = {
        "benchmark": "ranking_movielens",
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": str(Path(args.data).resolve()),
        "world_size": args.nproc,
        "git_commit": git_commit(REPO),
        "env": environment_info(),
        "config_file": str(CONFIG.relative_to(REPO)),
        "overrides": args.overrides,
        "config": config,
        "summary": summary,
        "seed_reference_ml20m": {"icr": 0.712, "ucr": 0.731, "hybrid": 0.737},
        "runs": runs,
    }
    write_result(args.out, payload)
    print("\n| formulation | test AUC (mean ± std) | test NCE (mean ± std) | seeds |\n|---|---|---|---|")
    for f, s in summary.items():
        print(
            f"| {f} | {s['auc_mean']:.4f} ± {s['auc_std']:.4f} | {s['nce_mean']:.4f} ± {s['nce_std']:.4f} | {s['seeds']} |"
        )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
