"""The one place that reads or writes the torchrun environment and initializes torch.distributed.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT (and the others in
:data:`TORCHRUN_VARS`). A plain ``python -m launch.train`` (no torchrun) runs as a world of one: a process group is
still created, because the TorchRec planner and DMP collectives expect one. Every other module goes through the
functions here (tests/unit/test_architecture.py enforces it).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

TORCHRUN_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE",
)  # fmt: skip
"""The environment variables torchrun sets for its workers (torch.distributed.run docs): only this module reads or
writes them."""


@dataclass(frozen=True, slots=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port free on localhost right now (racy by nature; fine for tests and single-node runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from e


def process_rank() -> int:
    """This process's global rank as torchrun set it (0 without torchrun), without creating a process group:
    for setting up logging before anything else runs."""
    return _int_env("RANK", 0)


def set_torchrun_env(rank: int, world_size: int, master_port: int, master_addr: str = "127.0.0.1") -> None:
    """Set the variables torchrun would give rank ``rank`` of a single-node world (used by the spawn helper)."""
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
        }
    )


def export_local_rank(env: DistEnv) -> None:
    """Set ``LOCAL_RANK`` from ``env`` unless torchrun did: DeepSpeed reads it even when the process group exists,
    and a plain ``python`` run (a world of one) has none."""
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))


def read_env(device: str = "auto") -> DistEnv:
    """Rank/world/device from the torchrun environment. ``device``: auto | cpu | cuda.

    Backend is chosen from the device: nccl on CUDA, gloo on CPU. CUDA is only queried here, never at import.
    """
    rank = _int_env("RANK", 0)
    world_size = _int_env("WORLD_SIZE", 1)
    local_rank = _int_env("LOCAL_RANK", 0)
    local_world_size = _int_env("LOCAL_WORLD_SIZE", world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda was requested but torch.cuda.is_available() is False")
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    return DistEnv(rank, world_size, local_rank, local_world_size, dev, backend)


_PORT_ATTEMPTS = 5
_SET_BY_US: set[str] = set()
"""Rendezvous variables a world of one set for itself (removed again by :func:`destroy_distributed`)."""


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistEnv:
    """Read the environment and create the default process group (idempotent)."""
    env = read_env(device)
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            os.environ["MASTER_ADDR"] = "127.0.0.1"
            _SET_BY_US.add("MASTER_ADDR")
        own_port = "MASTER_PORT" not in os.environ
        if own_port:
            _SET_BY_US.add("MASTER_PORT")
        if own_port and env.world_size > 1:
            raise RuntimeError("WORLD_SIZE>1 but MASTER_PORT is unset: launch with torchrun")
        for attempt in range(_PORT_ATTEMPTS):
            if own_port:
                os.environ["MASTER_PORT"] = str(free_port())
            try:
                dist.init_process_group(
                    backend=env.backend,
                    rank=env.rank,
                    world_size=env.world_size,
                    timeout=datetime.timedelta(seconds=timeout_s),
                )
                break
            except dist.DistNetworkError as e:
                # A port we picked ourselves (world of one) can be taken by another process between free_port()
                # and the store's listen(): pick another. A port the launcher chose is not ours to change.
                if not own_port or "EADDRINUSE" not in str(e) or attempt == _PORT_ATTEMPTS - 1:
                    raise
                logger.warning(
                    "port %s was taken before the store listened on it; trying another", os.environ["MASTER_PORT"]
                )
        if env.is_main:
            logger.info(
                "initialized %s process group: world_size=%d device=%s", env.backend, env.world_size, env.device
            )
    return env


def destroy_distributed() -> None:
    """Destroy the default process group and unset the rendezvous variables :func:`init_distributed` set itself,
    so a later subprocess (or a second world of one) does not inherit a port that is still, or again, in use."""
    if dist.is_initialized():
        dist.destroy_process_group()
    while _SET_BY_US:
        os.environ.pop(_SET_BY_US.pop(), None)
