"""Locality batching (seed §3.5.3, `train.locality`): ICR and UCR daily jobs at 2 ranks with and without it, on the
same synthetic logs: training examples/s and the next-day NCE.

    .venv/bin/python benchmarks/daily_locality.py                      # 8 days of configs/daily/base.yaml's world
    .venv/bin/python benchmarks/daily_locality.py --days 3 --events-per-day 20000 --out /tmp/x.json

With locality, the rows of one owner in a rank's batch (ICR: the user, UCR: the item) share the owner's first list:
it is looked up and projected once. Examples/s are the mean over days 2.. of each job (day 1 includes start-up);
NCE is the main task's on the first 10K rows of the next day, mean over the evaluated days and on the last one.
Writes ``benchmarks/results/daily_locality.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from daily_growth import run_job  # noqa: E402

from framework.trainers.common import (  # noqa: E402
    check_results_or_exit,
    result_header,
    write_result,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, default=8)
    p.add_argument("--events-per-day", type=int, default=100_000)
    p.add_argument("--num-users", type=int, default=3_000)
    p.add_argument("--new-items-per-day", type=int, default=400)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "daily_locality.json"))
    args = p.parse_args(argv)
    check_results_or_exit(p, args.out)
    from framework.data.logs.generator import WorldConfig, generate_logs

    t0 = time.perf_counter()
    world = WorldConfig(num_users=args.num_users, events_per_day=args.events_per_day,
                        new_items_per_day=args.new_items_per_day)  # fmt: skip
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_logs(root / "logs", args.days, world)
        for name in ("icr", "ucr"):
            for locality in (False, True):
                key = f"{name}{'_locality' if locality else ''}"
                print(f"=== {key} ===", flush=True)
                job = run_job(name, root / key, root / "logs", [f"train.locality={str(locality).lower()}"])
                days = job["days"]
                evals = [d["eval"]["tasks"][d["eval"]["main_task"]]["nce"] for d in days if d["eval"]]
                rows[key] = {
                    "examples_per_s": statistics.fmean(d["train"]["examples_per_s"] for d in days[1:]),
                    "nce_mean": statistics.fmean(evals),
                    "nce_last": evals[-1],
                    "exactly_once": all(d["train"]["exactly_once"] for d in days),
                    "command": job["command"],
                }
                print(json.dumps({k: v for k, v in rows[key].items() if k != "command"}), flush=True)
    ratios = {n: rows[f"{n}_locality"]["examples_per_s"] / rows[n]["examples_per_s"] for n in ("icr", "ucr")}
    nce_delta = {n: rows[f"{n}_locality"]["nce_mean"] - rows[n]["nce_mean"] for n in ("icr", "ucr")}
    result = {
        **result_header("daily_locality"),
        "world": {f: str(getattr(world, f)) for f in world.__dataclass_fields__},
        "days": args.days,
        "jobs": rows,
        "summary": {"examples_per_s_locality_over_plain": ratios, "nce_mean_locality_minus_plain": nce_delta},
        "wall_seconds": time.perf_counter() - t0,
    }
    write_result(args.out, result)
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
