"""The clip trainer's optimizer step (``train_step``) clamps ``logit_scale`` in place after the engine step, as
open_clip does; DDP engine at world size 1 in this process (the 2-rank ZeRO check is
tests/distributed/test_logit_scale_clamp.py)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from framework.config.schema import ClipOptimConfig, EngineConfig
from framework.data.clip.loader import ClipBatch
from framework.distributed.engine import Engine
from framework.distributed.engine_factory import build_engine
from framework.distributed.env import destroy_distributed, free_port, init_distributed
from framework.losses.contrastive import RankCLIPLossConfig
from framework.models.clip.model import CLIP, tiny_clip_config
from framework.trainers.clip import train_step

MAX = math.log(100.0)


@pytest.fixture
def one_rank(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    init_distributed("cpu")
    yield
    destroy_distributed()


def _engine(logit_scale: float, accum: int = 1) -> Engine:
    torch.manual_seed(0)
    model = CLIP(tiny_clip_config())
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale)
    optim = ClipOptimConfig(lr=1e-2, warmup_steps=0, schedule="constant")
    cfg = EngineConfig(backend="ddp", zero_stage=0, grad_accum_steps=accum, device="cpu")
    return build_engine(model, cfg, optim, micro_batch_size=4, max_steps=10, env=init_distributed("cpu"))


def _batches(seed: int = 0) -> Iterator[ClipBatch]:
    g = torch.Generator().manual_seed(seed)
    while True:
        yield ClipBatch(
            images_BCHW=torch.randn(4, 3, 32, 32, generator=g),
            tokens_BL=torch.randint(1, 100, (4, 16), generator=g),
            eot_index_B=torch.tensor([3, 7, 10, 15]),
            keys=[], shards=[], passes=[],
        )  # fmt: skip


@pytest.mark.usefixtures("one_rank")
@pytest.mark.parametrize(("start", "bound"), [(MAX + 0.5, MAX), (-0.3, 0.0)])
def test_logit_scale_out_of_bounds_is_clamped_after_the_step(start: float, bound: float) -> None:
    """A parameter already past a bound (a forward-time clamp would leave it there: no gradient) is back at the bound
    after the step, and the next forward returns exp(bound)."""
    engine = _engine(start)
    terms = train_step(engine, _batches(), RankCLIPLossConfig(), max_logit_scale=MAX)
    assert len(terms) == 1 and terms[0]["logit_scale"] == pytest.approx(math.exp(start), rel=1e-5)
    assert engine.module.logit_scale.item() == pytest.approx(bound, abs=1e-6)
    terms = train_step(engine, _batches(1), RankCLIPLossConfig(), max_logit_scale=MAX)
    assert terms[0]["logit_scale"] == pytest.approx(math.exp(bound), rel=1e-5)
    assert 0.0 <= engine.module.logit_scale.item() <= MAX


@pytest.mark.usefixtures("one_rank")
@pytest.mark.parametrize(("start", "direction", "bound"), [(MAX - 1e-3, -1.0, MAX), (1e-3, 1.0, 0.0)])
def test_step_that_pushes_past_a_bound_ends_at_the_bound(
    monkeypatch: pytest.MonkeyPatch, start: float, direction: float, bound: float
) -> None:
    """A loss of -/+ logit scale: AdamW's first step moves the parameter by lr = 1e-2 towards (and 9e-3 past) the
    bound; the clamp puts it back on the bound."""

    def push(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, *_: object, **__: object) -> dict:
        return {"loss": direction * scale.sum() + 0.0 * (img.sum() + txt.sum())}  # as global_batch_loss returns

    monkeypatch.setattr("framework.trainers.clip.global_batch_loss", push)
    engine = _engine(start)
    train_step(engine, _batches(), RankCLIPLossConfig(), max_logit_scale=MAX)
    assert engine.module.logit_scale.item() == pytest.approx(bound, abs=1e-6)


@pytest.mark.usefixtures("one_rank")
def test_in_bounds_parameter_is_left_alone_and_accumulation_steps_once() -> None:
    engine = _engine(math.log(1 / 0.07), accum=2)
    before = engine.module.logit_scale.item()
    terms = train_step(engine, _batches(), RankCLIPLossConfig(), max_logit_scale=MAX)
    assert len(terms) == 2 and engine.global_step == 1
    moved = engine.module.logit_scale.item()
    assert moved != before and 0.0 < moved < MAX
    assert engine.clamp_param_("logit_scale", 0.0, MAX) is False and engine.module.logit_scale.item() == moved
    with pytest.raises(KeyError, match="no parameter 'temperature'"):
        engine.clamp_param_("temperature", 0.0, MAX)
