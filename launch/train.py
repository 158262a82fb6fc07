"""torchrun entry point: ``torchrun [--nnodes N --nproc_per_node G --rdzv_endpoint ...] -m launch.train
--config <yaml> [a.b=c ...]``. Parse, build, train, close."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from framework.config import load_job_config
from framework.distributed.env import destroy_distributed, process_rank
from framework.trainers import get_trainer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launch.train", description=__doc__)
    parser.add_argument("--config", required=True, help="job YAML (configs/...)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    rank = process_rank()
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[rank{rank}] %(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    cfg = load_job_config(args.config, args.overrides)
    try:
        return get_trainer(cfg.family)(cfg)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
