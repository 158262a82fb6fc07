"""Engines with frozen parameters (a LoRA base), a per-group learning rate and chunked checkpoint loads, on 2 gloo
ranks for DDP and DeepSpeed ZeRO-1/2/3 (every ZeRO-3 parameter partitioned).

- checkpoints hold the trainable parameters and their moments only (meta.json lists the frozen ones);
  ``consolidated_state_dict`` holds the whole model, frozen values included (gathered under ZeRO-3);
- the frozen parameters never change, and the group with its own lr moves at that lr (0 here: it stays put);
- a fresh engine loading with a tiny ``load_chunk_bytes`` (one parameter per chunk) holds at most one parameter's
  value + moments at a time, yet restores everything: its next step equals the uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from framework.checkpoint.dcp import Checkpointer
from framework.config.schema import ClipOptimConfig, EngineConfig
from framework.distributed.engine import load_chunks
from framework.distributed.engine_factory import build_engine
from framework.distributed.env import read_env
from framework.distributed.spawn import run_multiprocess

RUNS = [("ddp", 0), ("deepspeed", 1), ("deepspeed", 2), ("deepspeed", 3)]
OPTIM = ClipOptimConfig(lr=1e-2, weight_decay=0.0, warmup_steps=1, schedule="constant")
FROZEN = ("base.weight", "base.bias")
FIXED_LR = ("head.weight", "head.bias")  # group with lr 0


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(6, 10)
        self.adapter = nn.Linear(10, 10)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.base(x))
        return self.head(h + self.adapter(h))


def make(backend: str, stage: int, seed: int, chunk: int = 2**28):
    torch.manual_seed(0)
    model = Tiny()  # the frozen base is the same in every engine
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in (*model.adapter.parameters(), *model.head.parameters()):
            p.normal_(0, 0.3)
    model.base.requires_grad_(False)
    env = read_env("cpu")
    cfg = EngineConfig(backend=backend, zero_stage=stage, device="cpu")  # type: ignore[arg-type]
    overrides = {"zero_optimization": {"stage3_param_persistence_threshold": 0}} if backend == "deepspeed" else None
    return build_engine(model, cfg, OPTIM, micro_batch_size=4, max_steps=10, env=env, ds_config_overrides=overrides,
                        group_lrs={"head": 0.0}, load_chunk_bytes=chunk)  # fmt: skip


def step(engine, k: int) -> None:
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(k))
    rows = slice(4 * engine.rank, 4 * engine.rank + 4)
    engine.backward(engine(x[rows]).pow(2).mean())
    assert engine.step()


def _phase(root: str) -> dict[str, Any]:
    out = {}
    for backend, stage in RUNS:
        name = f"{backend}{stage}"
        engine = make(backend, stage, seed=1)
        before = engine.consolidated_state_dict()
        step(engine, 0)
        step(engine, 1)
        path = engine.save(Path(root) / name, {"rank": engine.rank})
        after = engine.consolidated_state_dict()
        step(engine, 2)
        want = engine.consolidated_state_dict()

        resumed = make(backend, stage, seed=2, chunk=1)  # every parameter a chunk of its own
        resumed.load(path)
        step(resumed, 2)
        out[name] = {"before": before, "after": after, "want": want, "got": resumed.consolidated_state_dict(),
                     "peak": resumed.last_load_peak_bytes, "meta": Checkpointer.read_meta(path)}  # fmt: skip
    return out


@pytest.fixture(scope="module")
def phase(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_multiprocess(_phase, 2, str(tmp_path_factory.mktemp("frozen")))[0]


@pytest.mark.parametrize(("backend", "stage"), RUNS)
def test_frozen_params_stay_out_of_checkpoints_and_never_move(phase, backend: str, stage: int) -> None:
    r = phase[f"{backend}{stage}"]
    assert set(r["meta"]["frozen"]) == set(FROZEN)
    assert set(r["meta"]["params"]) == {"adapter.weight", "adapter.bias", *FIXED_LR}
    assert set(r["after"]) == {*FROZEN, "adapter.weight", "adapter.bias", *FIXED_LR}
    for name in (*FROZEN, *FIXED_LR):  # frozen, and the lr-0 group
        torch.testing.assert_close(r["after"][name], r["before"][name], rtol=0, atol=0, msg=name)
    assert (r["after"]["adapter.weight"] - r["before"]["adapter.weight"]).abs().max() > 1e-3


@pytest.mark.parametrize(("backend", "stage"), RUNS)
def test_chunked_load_restores_exactly_holding_one_parameter_at_a_time(phase, backend: str, stage: int) -> None:
    r = phase[f"{backend}{stage}"]
    for name, want in r["want"].items():
        torch.testing.assert_close(r["got"][name], want, rtol=0, atol=0, msg=name)
    largest = max(math.prod(s) for s in r["meta"]["params"].values())
    total = sum(math.prod(s) for s in r["meta"]["params"].values())
    assert r["peak"] == 3 * 4 * largest < 3 * 4 * total  # value + two moments of the largest parameter


def test_load_chunks_respect_the_budget() -> None:
    shapes = {"a": (10,), "b": (5, 2), "c": (30,), "d": (1,)}
    assert load_chunks(shapes, 1, 80) == [["a", "b"], ["c"], ["d"]]
    assert load_chunks(shapes, 3, 10**6) == [["a", "b", "c", "d"]]
    assert load_chunks(shapes, 1, 1) == [["a"], ["b"], ["c"], ["d"]]
