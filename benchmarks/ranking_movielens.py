"""ICR / UCR / Hybrid on MovieLens under three leakage-free protocols, next to two id-only baselines.

    python benchmarks/ranking_movielens.py tune --data ../shared/data/ml-100k   # validation split only
    python benchmarks/ranking_movielens.py run --data ../shared/data/ml-100k    # test split, 3 seeds, 2 ranks

``tune`` trains every protocol x formulation x grid point on the *validation* split carved from train
(``data.holdout=validation``: the test events are dropped, so tuning never sees them), evaluates after every
epoch, and writes benchmarks/results/ranking_movielens_tuning.json with the best (grid point, epochs) per cell,
and the logistic-regression C chosen on validation too. Tuning runs on 1 rank: a run is the same at any world
size (global batch and per-example UC-Sampling; tests/integration/test_ranking_resume_world_size.py).

``run`` trains each cell with its tuned settings on the full train split, 3 seeds, 2 gloo ranks through
torchrun, scores the test split, fits the baselines (item positive rate; logistic regression on one-hot user +
item ids) on the same split, and writes benchmarks/results/ranking_movielens.json: a ``summary``
``{protocol: {icr|ucr|hybrid: {auc_mean, auc_std, nce_mean}, item_rate: {auc}, logreg: {auc}}}``, every run
with its full config, the command and the (clean) git commit. It prints one Markdown table per protocol.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
RESULTS = REPO / "benchmarks" / "results"
PROTOCOLS = ("chronological", "random", "user")
FORMULATIONS = ("icr", "ucr", "hybrid")
GRID: list[dict[str, Any]] = [
    {"model.embedding_dim": 64, "optim.sparse_lr": 0.05},  # the config's defaults
]
"""Points tuned on validation per protocol x formulation, each x epochs 1..--max-epochs (evaluated after each).
CPU time allows little here (2 cores; one epoch at N = M = 512 takes one to two minutes on a loaded machine): in
a first probe every model overfit after one or two epochs at the defaults (train AUC rising, validation AUC
falling), so the epoch count is what this grid tunes. A probe on one cell (random split, ICR, N = M = 32; not in
the JSON) found a smaller dimension (16) and a lower embedding learning rate (0.01) worse at epochs 1 and 2;
dropout and weight decay are not tuned. Add points here when CPU time allows."""
LOGREG_C = (0.1, 1.0, 10.0)
THESIS_ML20M = {"icr": 0.712, "ucr": 0.731, "hybrid": 0.737}


def train_run(args: argparse.Namespace, name: str, nproc: int, overrides: list[str]) -> tuple[dict[str, Any], float]:
    """One torchrun job; returns (metrics.json, wall seconds)."""
    run_dir = Path(args.run_root) / name
    overrides = [
        f"data.path={Path(args.data).resolve()}", f"train.run_dir={run_dir}", "train.resume=never",
        "train.progress=false", "train.tensorboard=false", *overrides, *args.overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    t0 = time.perf_counter()
    proc = subprocess.run(torchrun_command(nproc, CONFIG, overrides), cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"{name} failed with exit code {proc.returncode} (log: {run_dir / 'log.txt'})")
    return json.loads((run_dir / "metrics.json").read_text()), time.perf_counter() - t0


def baselines(data_path: str, protocol: str, holdout: str, cs: tuple[float, ...]) -> dict[str, Any]:
    from framework.data.ranking.batches import RankingData
    from framework.data.ranking.movielens import load_movielens
    from framework.evaluation.ranking_baselines import item_rate, logreg

    data = RankingData(load_movielens(data_path), formulation="icr", max_item_hist=1, split=protocol, holdout=holdout)
    return {
        "item_rate": vars(item_rate(data)),
        "logreg": {str(c): vars(logreg(data, C=c)) for c in cs},
    }


def cmd_tune(args: argparse.Namespace) -> dict[str, Any]:
    runs, best = [], {}
    for protocol, formulation in itertools.product(args.protocols, args.formulations):
        cell = []
        for point in GRID:
            name = f"tune_{protocol}_{formulation}_" + "_".join(f"{k.split('.')[-1]}{v}" for k, v in point.items())
            overrides = [
                f"data.split={protocol}", f"model.formulation={formulation}", "data.holdout=validation",
                f"train.epochs={args.max_epochs}", "train.eval_every_epochs=1", "train.seed=0",
                *(f"{k}={v}" for k, v in point.items()),
            ]  # fmt: skip
            metrics, wall = train_run(args, name, 1, overrides)
            curve = [
                {"epochs": round(e["epochs"], 3), "auc": e["like/auc"], "nce": e["like/nce"]}
                for e in metrics["epoch_evals"]
            ]
            cell.append({"protocol": protocol, "formulation": formulation, "point": point, "val_curve": curve,
                         "wall_s": wall, "config": metrics["config"]})  # fmt: skip
            print(f"{name}: val AUC by epoch {[round(c['auc'], 4) for c in curve]} ({wall:.0f}s)", flush=True)
        runs += cell
        best_run, best_eval = max(((r, e) for r in cell for e in r["val_curve"]), key=lambda re: re[1]["auc"])
        best.setdefault(protocol, {})[formulation] = {
            "point": best_run["point"], "epochs": round(best_eval["epochs"]), "val_auc": best_eval["auc"]
        }  # fmt: skip
    logreg_c = {}
    for protocol in args.protocols:
        b = baselines(args.data, protocol, "validation", LOGREG_C)
        c = max(LOGREG_C, key=lambda c: b["logreg"][str(c)]["auc"])
        logreg_c[protocol] = {"C": c, "validation": b}
    return {"benchmark": "ranking_movielens_tuning", "grid": GRID, "max_epochs": args.max_epochs, "best": best,
            "logreg_C": logreg_c, "runs": runs}  # fmt: skip


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    tuning = json.loads(Path(args.tuning).read_text())
    runs, summary, tables = [], {}, []
    for protocol in args.protocols:
        summary[protocol] = {}
        for formulation in args.formulations:
            tuned = tuning["best"][protocol][formulation]
            settings = [f"{k}={v}" for k, v in tuned["point"].items()] + [f"train.epochs={tuned['epochs']}"]
            cell = []
            for seed in args.seeds:
                overrides = [f"data.split={protocol}", f"model.formulation={formulation}", f"train.seed={seed}",
                             *settings]  # fmt: skip
                metrics, wall = train_run(args, f"{protocol}_{formulation}_seed{seed}", args.nproc, overrides)
                r = {"protocol": protocol, "formulation": formulation, "seed": seed,
                     "test_auc": metrics["test"]["like/auc"], "test_nce": metrics["test"]["like/nce"],
                     "test_examples": metrics["test"]["num_examples"], "steps": metrics["steps"], "wall_s": wall,
                     "world_size": metrics["world_size"], "config": metrics["config"]}  # fmt: skip
                print(f"{protocol:13s} {formulation:6s} seed {seed}: test AUC {r['test_auc']:.4f} "
                      f"NCE {r['test_nce']:.4f} ({wall:.0f}s)", flush=True)  # fmt: skip
                cell.append(r)
            aucs, nces = [r["test_auc"] for r in cell], [r["test_nce"] for r in cell]
            summary[protocol][formulation] = {
                "auc_mean": statistics.fmean(aucs),
                "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                "nce_mean": statistics.fmean(nces),
                "nce_std": statistics.stdev(nces) if len(nces) > 1 else 0.0,
                "seeds": len(aucs),
                "tuned": tuned,
            }
            runs += cell
        c = tuning["logreg_C"][protocol]["C"]
        b = baselines(args.data, protocol, "test", (c,))
        summary[protocol]["item_rate"] = b["item_rate"]
        summary[protocol]["logreg"] = {**b["logreg"][str(c)], "C": c}
        tables.append(markdown_table(protocol, summary[protocol]))
    print("\n" + "\n\n".join(tables))
    return {"benchmark": "ranking_movielens", "world_size": args.nproc, "tuning": str(Path(args.tuning).name),
            "summary": summary, "seed_reference_ml20m": THESIS_ML20M, "runs": runs}  # fmt: skip


def markdown_table(protocol: str, s: dict[str, Any]) -> str:
    rows = [f"**{protocol}**", "", "| model | test AUC (mean ± std, 3 seeds) | test NCE | thesis ML-20M AUC |",
            "|---|---|---|---|"]  # fmt: skip
    for f in FORMULATIONS:
        if f in s:
            rows.append(f"| {f.upper()} | {s[f]['auc_mean']:.4f} ± {s[f]['auc_std']:.4f} | {s[f]['nce_mean']:.4f} "
                        f"| {THESIS_ML20M[f]} |")  # fmt: skip
    rows.append(f"| item positive rate | {s['item_rate']['auc']:.4f} | {s['item_rate']['nce']:.4f} | |")
    rows.append(f"| logistic regression, one-hot user + item (C={s['logreg']['C']}) | {s['logreg']['auc']:.4f} "
                f"| {s['logreg']['nce']:.4f} | |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["tune", "run"])
    p.add_argument("--data", required=True, help="ml-100k directory (u.data) or ml-20m/25m (ratings.csv)")
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument("--formulations", nargs="+", default=list(FORMULATIONS), choices=FORMULATIONS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--nproc", type=int, default=2, help="ranks of the run mode (tune always uses 1)")
    p.add_argument("--max-epochs", type=int, default=2, help="tune: epochs trained, evaluated after each")
    p.add_argument("--tuning", default=str(RESULTS / "ranking_movielens_tuning.json"), help="run: the tune output")
    p.add_argument("--run-root", default=str(REPO / "runs" / "bench_movielens"))
    p.add_argument("--out", help="default: benchmarks/results/ranking_movielens[_tuning].json")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = p.parse_intermixed_args(argv)
    out = args.out or str(
        RESULTS / ("ranking_movielens_tuning.json" if args.mode == "tune" else "ranking_movielens.json")
    )
    try:
        check_results_path(out)  # before minutes of benchmarking, not after
    except DirtyTreeError as e:
        p.error(str(e))
    if args.mode == "run" and len(args.seeds) < 3:
        print("note: fewer than 3 seeds; the README tables use 3", file=sys.stderr)
    payload = cmd_tune(args) if args.mode == "tune" else cmd_run(args)
    payload = {
        **payload,
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": str(Path(args.data).resolve()),
        "git_commit": git_commit(REPO),
        "env": environment_info(),
        "config_file": str(CONFIG.relative_to(REPO)),
        "overrides": args.overrides,
    }
    write_result(out, payload)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
