"""DAO's candidate scoring split over 2 gloo ranks selects exactly what one rank does (and gathers every score)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framework.distributed.spawn import run_multiprocess

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = ["dao.chunk=40", "fit.steps=60", "dao.cg_iterations=10"]


def _select_round(strategy: str, params: str) -> dict:
    from framework.active.loop import RoundContext, load_pool, select, sharded_dao_scores, surrogate_probs
    from framework.active.models import build_model
    from framework.active.train import fit
    from framework.config import load_job_config

    cfg = load_job_config(REPO / "configs" / "active" / "digits.yaml", [*OVERRIDES, f"dao.params={params}"])
    pool = load_pool(cfg)
    labeled = torch.arange(20)
    unlabeled = torch.arange(20, 150)  # 130 candidates: chunks of 40, 40, 40, 10 (rank 0 takes 1st and 3rd)
    torch.manual_seed(0)
    model = build_model("cnn", tuple(tuple(x.shape[1:]) for x in pool.x), pool.num_classes)
    fit(model, tuple(x[labeled] for x in pool.x), pool.y[labeled], cfg.fit, seed=0)
    ctx = RoundContext(pool, labeled, unlabeled, model, seed=0, round=1)
    scores = sharded_dao_scores(ctx, cfg.dao, surrogate_probs(ctx, cfg.fit, cfg.loop.surrogate))
    return {"picked": select(strategy, ctx, 10, cfg).tolist(), "scores": scores}


@pytest.mark.parametrize(("strategy", "params"), [("dao", "all"), ("dao_topk", "head")])
def test_dao_selects_the_same_at_one_and_two_ranks(strategy: str, params: str) -> None:
    (one,) = run_multiprocess(_select_round, 1, strategy, params, timeout_s=600)
    two = run_multiprocess(_select_round, 2, strategy, params, timeout_s=600)
    assert two[0]["picked"] == two[1]["picked"] == one["picked"]
    assert torch.equal(two[0]["scores"], one["scores"]) and torch.equal(two[1]["scores"], one["scores"])
    assert one["scores"].numel() == 130 and one["scores"].std() > 0
