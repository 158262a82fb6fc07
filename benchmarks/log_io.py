"""Production-log I/O: the synthetic generator's events/s on a 10M-event day, and the reader's rows/s on one core.

    .venv/bin/python benchmarks/log_io.py                                     # 10M events, 1M users
    .venv/bin/python benchmarks/log_io.py --events-per-day 200000 --out /tmp/x.json   # smoke

Goals (issue 8): a 10M-event day within minutes on this 2-core machine; the reader decodes >= 1M rows/s per core.
The reader is timed with Arrow's CPU and I/O pools at one thread (``pyarrow.set_cpu_count(1)``), validating every
row (nulls, time order, labels) as in training; the page cache is warm (the day was just written).
Writes ``benchmarks/results/log_io.json`` (``--out``) with the environment and git commit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402

from framework.data.logs.generator import WorldConfig, generate_logs  # noqa: E402
from framework.data.logs.reader import LogReader  # noqa: E402
from framework.data.logs.schema import LogSchema  # noqa: E402
from framework.trainers.common import (  # noqa: E402
    check_results_or_exit,
    result_header,
    write_result,
)

GOAL_GEN_SECONDS = 300.0
GOAL_READ_ROWS_PER_S = 1_000_000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events-per-day", type=int, default=10_000_000)
    p.add_argument("--num-users", type=int, default=1_000_000)
    p.add_argument("--new-items-per-day", type=int, default=100_000)
    p.add_argument("--parts-per-day", type=int, default=20)
    p.add_argument("--read-repeats", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "log_io.json"))
    args = p.parse_args(argv)
    check_results_or_exit(p, args.out)
    cfg = WorldConfig(num_users=args.num_users, events_per_day=args.events_per_day,
                      new_items_per_day=args.new_items_per_day, parts_per_day=args.parts_per_day)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        (day,) = generate_logs(tmp, 1, cfg, progress=True)
        gen_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*.parquet"))
        print(f"generated {args.events_per_day:,} events in {gen_s:.1f} s ({args.events_per_day / gen_s:,.0f}/s), "
              f"{size / 2**20:.0f} MiB")  # fmt: skip

        pa.set_cpu_count(1)
        pa.set_io_thread_count(1)
        reads: list[float] = []
        for _ in range(args.read_repeats):
            reader = LogReader(tmp, day, LogSchema(), chunk_rows=65_536)
            t0 = time.perf_counter()
            rows = sum(len(c) for c in reader.chunks())
            reads.append(time.perf_counter() - t0)
            assert rows == args.events_per_day and reader.bad.total == 0
        best = min(reads)
        print(f"read + validated {rows:,} rows on one thread: best {best:.2f} s ({rows / best:,.0f} rows/s)")

    result: dict[str, Any] = {
        **result_header("log_io"),
        "world": {f: str(getattr(cfg, f)) for f in cfg.__dataclass_fields__},
        "generator": {
            "events": args.events_per_day,
            "seconds": gen_s,
            "events_per_s": args.events_per_day / gen_s,
            "parquet_bytes": size,
            "meets_goal": gen_s <= GOAL_GEN_SECONDS,
            "goal_seconds": GOAL_GEN_SECONDS,
        },
        "reader": {
            "rows": rows,
            "threads": 1,
            "seconds": reads,
            "rows_per_s": rows / best,
            "meets_goal": rows / best >= GOAL_READ_ROWS_PER_S,
            "goal_rows_per_s": GOAL_READ_ROWS_PER_S,
        },
    }
    write_result(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
