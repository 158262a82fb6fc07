"""torchrun entry point: ``torchrun [--nnodes N --nproc_per_node G --rdzv_endpoint ...] -m launch.train
--config <yaml> [--verbose] [a.b=c ...]``. Parse, build, train, close.

The console shows the progress bar and the project's own log lines; everything else goes to
``<run_dir>/log.txt`` (framework/logs.py); ``--verbose`` puts third-party INFO and known warnings back on the
console. A bad config prints one ``ConfigError`` line (rank 0) and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from framework.config import ConfigError, load_job_config
from framework.distributed.env import destroy_distributed, process_rank
from framework.logs import RunLogging
from framework.trainers import get_trainer
from launch.preflight import one_line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launch.train", description=__doc__)
    parser.add_argument("--config", required=True, help="job YAML (configs/...)")
    parser.add_argument(
        "--verbose", action="store_true", help="third-party INFO logs and known warnings on the console"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with RunLogging(process_rank(), verbose=args.verbose) as logs:
        cfg = load_job_config(args.config, args.overrides)
        logs.to_file(cfg.loop.run_dir if cfg.family == "active" else cfg.train.run_dir)
        try:
            return get_trainer(cfg.family)(cfg)
        finally:
            destroy_distributed()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        if process_rank() == 0:
            print(f"ConfigError: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
