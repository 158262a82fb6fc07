"""A world of one picks its own rendezvous port; a port taken before the store listens is replaced, not fatal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from framework.distributed.env import TORCHRUN_VARS

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = """
import logging, socket
import torch.distributed as dist
import framework.distributed.env as env_mod

logging.basicConfig(level=logging.WARNING)
busy = socket.socket()
busy.bind(("127.0.0.1", 0))
busy.listen()
taken = busy.getsockname()[1]
real_free_port = env_mod.free_port
ports = iter([taken, taken])  # the first two picks are already in use by another listener
env_mod.free_port = lambda: next(ports, None) or real_free_port()
import os
env = env_mod.init_distributed("cpu")
assert dist.is_initialized() and env.world_size == 1
dist.all_reduce(__import__("torch").ones(1))
env_mod.destroy_distributed()
assert not {"MASTER_ADDR", "MASTER_PORT"} & set(os.environ), "the port it picked must not leak to subprocesses"
print("ok")
"""


def test_taken_port_is_replaced_for_a_world_of_one() -> None:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
    assert proc.stderr.count("was taken before the store listened on it") == 2
