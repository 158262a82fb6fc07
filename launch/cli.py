"""``scalefirst`` console script.

scalefirst demo [--nproc 2]                      ICR vs UCR vs Hybrid on generated data, prints a table
scalefirst train --nproc 2 --config X [k=v ...]  torchrun on this machine (multi-node: use torchrun directly)
scalefirst export --checkpoint DIR --out FILE    sharded checkpoint -> plain state dict for inference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "ranking" / "demo.yaml"
FORMULATIONS = ("icr", "ucr", "hybrid")


def torchrun_command(nproc: int, config: str | Path, overrides: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "launch.train", "--config", str(config), *overrides,
    ]  # fmt: skip


def run_torchrun(nproc: int, config: str | Path, overrides: list[str]) -> int:
    if nproc < 1:
        raise SystemExit(f"--nproc must be >= 1, got {nproc}")
    env = dict(os.environ)
    # One intra-op thread per rank unless the user chose: ranks otherwise oversubscribe the cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(torchrun_command(nproc, config, overrides), env=env)


def format_table(rows: list[dict]) -> str:
    tasks = list(rows[0]["tasks"]) if rows else []
    header = ["formulation", *[f"{t} AUC" for t in tasks], *[f"{t} NCE" for t in tasks], "train ex/s"]
    lines = [" | ".join(f"{h:>12}" for h in header), "-" * (15 * len(header))]
    for r in rows:
        cells = [
            r["formulation"],
            *[f"{r['tasks'][t]['auc']:.4f}" for t in tasks],
            *[f"{r['tasks'][t]['nce']:.4f}" for t in tasks],
            f"{r['ex_per_s']:,.0f}",
        ]
        lines.append(" | ".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def summarize(metrics: dict) -> dict:
    test = metrics["test"]
    tasks = sorted({k.split("/")[0] for k in test if "/" in k}, key=lambda t: list(test).index(f"{t}/auc"))
    return {
        "formulation": metrics["formulation"],
        "tasks": {t: {"auc": test[f"{t}/auc"], "nce": test[f"{t}/nce"]} for t in tasks},
        "ex_per_s": metrics["train_examples_per_s"],
    }


def cmd_demo(args: argparse.Namespace) -> int:
    rows = []
    for formulation in FORMULATIONS:
        run_dir = Path(args.run_dir) / formulation
        overrides = [
            f"model.formulation={formulation}",
            f"train.run_dir={run_dir}",
            "train.resume=false",
            *args.overrides,
        ]
        print(f"\n=== {formulation}: {len(overrides)} overrides, {args.nproc} rank(s) ===", flush=True)
        rc = run_torchrun(args.nproc, args.config, overrides)
        if rc != 0:
            print(f"demo: {formulation} run failed with exit code {rc}", file=sys.stderr)
            return rc
        rows.append(summarize(json.loads((run_dir / "metrics.json").read_text())))
    print("\nICR vs UCR vs Hybrid (test split, gathered over ranks):")
    print(format_table(rows))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    return run_torchrun(args.nproc, args.config, args.overrides)


def cmd_export(args: argparse.Namespace) -> int:
    from framework.checkpoint.export import export_plain

    out = export_plain(args.checkpoint, args.out)
    print(f"wrote {out}")
    return 0


def cmd_make_shards(args: argparse.Namespace) -> int:
    from framework.data.shards import write_shards

    shards = write_shards(args.images, args.captions, args.out, samples_per_shard=args.samples_per_shard)
    print(f"wrote {len(shards)} shard(s) to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scalefirst", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="ICR vs UCR vs Hybrid on generated data")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--config", default=str(DEMO_CONFIG))
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("train", help="train on this machine through torchrun")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("export", help="checkpoint -> plain state dict")
    p.add_argument("--checkpoint", required=True, help="a committed checkpoint dir (run_dir/checkpoints/step_*)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("make-shards", help="image folder + captions CSV/TSV -> img2dataset-layout tar shards")
    p.add_argument("--images", required=True, help="folder the captions file's image paths are relative to")
    p.add_argument("--captions", required=True, help="CSV/TSV with header: image (or filename/file), caption")
    p.add_argument("--out", required=True)
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.set_defaults(fn=cmd_make_shards)

    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
