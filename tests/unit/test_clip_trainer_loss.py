"""The clip trainer's loss selection: kind, lambda ramp, options passed through to the loss."""

from __future__ import annotations

import pytest

from framework.config.schema import ClipLossConfig
from framework.trainers.clip import loss_config


def test_kind_clip_zeroes_both_lambdas() -> None:
    got = loss_config(ClipLossConfig(kind="clip", lambda_in=0.5, lambda_cross=0.25))
    assert (got.lambda_in, got.lambda_cross) == (0.0, 0.0)
    got = loss_config(ClipLossConfig(kind="rankclip", lambda_in=0.5, lambda_cross=0.25, per_position=True))
    assert (got.lambda_in, got.lambda_cross, got.per_position) == (0.5, 0.25, True)


@pytest.mark.parametrize(("step", "weight"), [(0, 0.0), (25, 0.25), (100, 1.0), (500, 1.0)])
def test_lambda_ramp_is_linear_then_flat(step: int, weight: float) -> None:
    cfg = ClipLossConfig(lambda_in=0.5, lambda_cross=0.25, lambda_ramp_steps=100, tie_break="random")
    got = loss_config(cfg, step)
    assert got.lambda_in == pytest.approx(0.5 * weight) and got.lambda_cross == pytest.approx(0.25 * weight)
    assert got.tie_break == "random"


def test_negative_ramp_is_rejected() -> None:
    with pytest.raises(ValueError, match="lambda_ramp_steps"):
        ClipLossConfig(lambda_ramp_steps=-1)
