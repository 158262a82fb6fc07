"""CLIP vs RankCLIP vs RankCLIP/pos on the offline demo set, for several training seeds: `scalefirst demo-clip` per
seed, collected into one JSON (the README's RankCLIP demo table is read from it).

    .venv/bin/python benchmarks/clip_demo.py                                     # seeds 0 1, 300 steps, 2 ranks
    .venv/bin/python benchmarks/clip_demo.py --seeds 0 --steps 4 --n-train 200 --n-val 64 --out /tmp/x.json  # smoke

Every seed uses the same data set (built once with seed 0 under each run root) and differs only in `train.seed`
(initialization and data order). Writes ``benchmarks/results/clip_demo.json`` (``--out``): per seed and model the
eval.json, the last logged training step, samples/s and the loss config, plus the environment and git commit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from framework.evaluation import format_eval_table  # noqa: E402
from framework.trainers.common import (  # noqa: E402
    DirtyTreeError,
    check_results_path,
    environment_info,
    git_commit,
    write_result,
)
from launch.cli import DEMO_CLIP_VARIANTS  # noqa: E402


def demo_command(run_root: Path, seed: int, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "launch.cli", "demo-clip", "--run-dir", str(run_root), "--nproc", str(args.nproc),
        "--steps", str(args.steps), "--n-train", str(args.n_train), "--n-val", str(args.n_val), f"train.seed={seed}",
    ]  # fmt: skip


def collect(run_root: Path) -> dict[str, Any]:
    """Per model of one demo run: eval.json + what metrics.json says about training (not its full history)."""
    out = {}
    for _, sub, _ in DEMO_CLIP_VARIANTS:
        metrics = json.loads((run_root / sub / "metrics.json").read_text())
        out[sub] = {
            "eval": json.loads((run_root / sub / "eval" / "eval.json").read_text()),
            "train_final": metrics["final"],
            "samples_per_s": metrics["samples_per_s"],
            "steps": metrics["steps"],
            "world_size": metrics["world_size"],
            "global_batch": metrics["global_batch"],
            "loss": metrics["config"]["loss"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--run-root", default="runs/clip_demo_bench", help="runs/<root>/s<seed>/ per seed")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "clip_demo.json"))
    args = p.parse_args(argv)
    try:
        check_results_path(args.out)  # before an hour of training, not after
    except DirtyTreeError as e:
        print(e, file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    seeds, commands = {}, {}
    for seed in args.seeds:
        run_root = Path(args.run_root) / f"s{seed}"
        cmd = demo_command(run_root, seed, args)
        commands[str(seed)] = " ".join(cmd[1:])
        print(f"### seed {seed}: {commands[str(seed)]}", flush=True)
        rc = subprocess.call(cmd, cwd=REPO)
        if rc != 0:
            print(f"clip_demo: seed {seed} failed with exit code {rc}", file=sys.stderr)
            return rc
        seeds[str(seed)] = collect(run_root)

    rows = [dict(m["eval"], name=f"s{s} {m['eval']['name']}") for s, models in seeds.items() for m in models.values()]
    print(format_eval_table(rows))
    result = {
        "benchmark": "clip_demo",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commands": commands,
        "git_commit": git_commit(REPO),
        "env": environment_info(),
        "steps": args.steps,
        "n_train": args.n_train,
        "n_val": args.n_val,
        "seeds": seeds,
        "wall_seconds": time.perf_counter() - t0,
    }
    write_result(args.out, result)
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
