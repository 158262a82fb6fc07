"""``Engine.clamp_param_`` on 2 gloo ranks: DDP and DeepSpeed ZeRO-0/1/2/3 (all parameters partitioned at ZeRO-3).

Each engine takes an AdamW step (lr 1e-2) that pushes ``logit_scale`` from ln(100) - 1e-3 to about ln(100) + 9e-3,
clamps it to [0, ln 100], then takes a step that pushes it down. Checked on every engine: the consolidated fp32
master value and the model copy the forward uses are both at the bound after the clamp, and the value after the
next step equals DDP's (where the model's parameter is the master). Were only the model copy clamped (ZeRO-1/2/3
keep the fp32 master apart), the master would still be past the bound and the next step would start from there.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from clip_engine_case import DS_OVERRIDES, GLOBAL_BATCH, Run, global_batch, make_model, part_rows

from framework.config.schema import ClipOptimConfig, EngineConfig
from framework.distributed.engine import Engine
from framework.distributed.engine_factory import build_engine
from framework.distributed.env import read_env
from framework.distributed.spawn import run_multiprocess

MAX = math.log(100.0)
RUNS = [Run("ddp", 0), Run("deepspeed", 0), Run("deepspeed", 1), Run("deepspeed", 2), Run("deepspeed", 3)]
OPTIM = ClipOptimConfig(lr=1e-2, weight_decay=0.1, warmup_steps=0, schedule="constant")


def _push(engine: Engine, direction: float) -> torch.Tensor:
    """One optimizer step on the loss ``direction * logit scale``; returns the scale the forward used."""
    images, tokens, eot = global_batch(0)
    rows = part_rows(engine.rank, engine.world_size, 1, 0)
    img, txt, scale = engine(images[rows], tokens[rows], eot[rows])
    engine.backward(direction * scale.sum() + 0.0 * (img.sum() + txt.sum()))
    assert engine.step()
    return scale.detach().reshape(())


def _logit_scale(engine: Engine) -> float:
    return float(engine.consolidated_state_dict()["logit_scale"])


def _clamp_on_ranks() -> dict[str, Any]:
    env = read_env("cpu")
    out = {}
    for run in RUNS:
        model = make_model()
        with torch.no_grad():
            model.logit_scale.fill_(MAX - 1e-3)
        cfg = EngineConfig(backend=run.backend, zero_stage=run.stage, device="cpu")  # type: ignore[arg-type]
        engine = build_engine(
            model, cfg, OPTIM, micro_batch_size=GLOBAL_BATCH // env.world_size, max_steps=5, env=env,
            ds_config_overrides=DS_OVERRIDES if run.backend == "deepspeed" else None,
        )  # fmt: skip
        _push(engine, -1.0)
        pushed = _logit_scale(engine)
        changed = engine.clamp_param_("logit_scale", 0.0, MAX)
        clamped = _logit_scale(engine)
        forward_scale = _push(engine, 1.0)  # the forward of this step reads the model copy
        out[run.name] = {
            "pushed": pushed,
            "changed": changed,
            "clamped": clamped,
            "forward_scale": float(forward_scale),
            "after_next_step": _logit_scale(engine),
        }
    return out


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    return run_multiprocess(_clamp_on_ranks, 2, timeout_s=600)


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.name)
def test_clamp_sets_master_and_model_copy_on_every_rank(results: list[dict[str, Any]], run: Run) -> None:
    for rank, got in enumerate(results):
        r = got[run.name]
        assert r["pushed"] > MAX + 5e-3, (rank, r)  # the step really went past the bound
        assert r["changed"] is True
        assert r["clamped"] == pytest.approx(MAX, abs=1e-6), (rank, r)
        assert r["forward_scale"] == pytest.approx(100.0, rel=1e-5), (rank, r)
        # From the bound, the second AdamW step (against the first's momentum) lands where DDP's does.
        assert r["after_next_step"] == pytest.approx(results[0]["ddp"]["after_next_step"], abs=1e-6), (rank, r)
        assert r["after_next_step"] < MAX
