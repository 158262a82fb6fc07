"""Batch acquisition (Gumbel top-k variants) and LURE, against their distributions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from framework.active.acquisition import acquisition_keys, select_batch
from framework.active.lure import lure_estimate, lure_weights, sample_proposal


def _pl_pair_probs(w: np.ndarray) -> dict[tuple[int, int], float]:
    """Plackett-Luce probability of each ordered pair (first, second) drawn without replacement."""
    total = w.sum()
    return {(i, j): w[i] / total * w[j] / (total - w[i]) for i, j in itertools.permutations(range(len(w)), 2)}


@pytest.mark.parametrize("method", ["softmax", "softrank", "power"])
def test_gumbel_topk_draws_follow_plackett_luce(method: str) -> None:
    """chi-squared goodness of fit of 20,000 ordered top-2 batches against PL(exp(beta * key)); a uniform draw
    (the same test on shuffled keys) must be rejected, so the test can tell."""
    scores = torch.tensor([0.3, 1.0, 2.2, 0.7])
    beta = 1.5
    keys = acquisition_keys(scores, method).numpy()
    probs = _pl_pair_probs(np.exp(beta * keys))
    g = torch.Generator().manual_seed(0)
    draws = 20_000
    counts = {pair: 0 for pair in probs}
    for _ in range(draws):
        i, j = select_batch(scores, 2, method, beta=beta, generator=g).tolist()
        counts[(i, j)] += 1
    observed = np.array([counts[p] for p in probs])
    expected = np.array([probs[p] * draws for p in probs])
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    wrong = _pl_pair_probs(np.exp(beta * keys[::-1].copy()))
    assert stats.chisquare(observed, np.array([wrong[p] * draws for p in probs])).pvalue < 1e-6


def test_topk_and_keys() -> None:
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3])
    assert select_batch(scores, 2, "topk").tolist() == [1, 3]
    assert acquisition_keys(scores, "softrank").tolist() == pytest.approx(
        [-math.log(3), 0.0, -math.log(4), -math.log(2)]
    )
    assert select_batch(scores, 1, "softmax", generator=torch.Generator().manual_seed(1)).tolist() == [
        1
    ]  # k=1: no noise
    with pytest.raises(ValueError, match="positive"):
        select_batch(torch.tensor([0.1, -0.2]), 2, "power")
    assert select_batch(scores, 10, "softrank").numel() == 4


def test_lure_is_unbiased_where_the_plain_proposal_mean_is_not() -> None:
    """Pool of 40 losses, proposal ~ loss (an active proposal favours high losses), n = 5 draws, 40,000 repeats.
    Stated tolerance: |mean(LURE) - pool mean| < 4 standard errors of that mean. The plain mean of the same draws
    is biased upward by > 10 standard errors. A uniform random subset's plain mean is also unbiased (it is the
    proposal that biases), but LURE with a loss-shaped proposal has the smaller variance."""
    g = torch.Generator().manual_seed(0)
    N, n, reps = 40, 5, 40_000
    loss = torch.rand(N, generator=g, dtype=torch.float64) ** 3 * 4 + 0.05
    weights = (loss + 0.1).expand(reps, N)
    idx, q = sample_proposal(weights, n, generator=g)
    drawn = loss[idx]
    est = lure_estimate(drawn, q, N)
    plain = drawn.mean(1)
    truth = float(loss.mean())
    se = float(est.std()) / math.sqrt(reps)
    assert abs(float(est.mean()) - truth) < 4 * se
    assert float(plain.mean()) - truth > 10 * float(plain.std()) / math.sqrt(reps)
    uniform = loss[torch.argsort(torch.rand(reps, N, generator=g), dim=1)[:, :n]].mean(1)
    assert abs(float(uniform.mean()) - truth) < 4 * float(uniform.std()) / math.sqrt(reps)
    assert float(est.var()) < float(uniform.var())


def test_sample_proposal_step_probabilities_and_exclusion() -> None:
    w = torch.tensor([[1.0, 0.0, 3.0, 4.0]])
    idx, q = sample_proposal(w, 3, generator=torch.Generator().manual_seed(0))
    assert 1 not in idx.tolist()[0] and sorted(idx.tolist()[0]) == [0, 2, 3]
    left = 8.0
    for i, qi in zip(idx[0].tolist(), q[0].tolist(), strict=True):
        assert qi == pytest.approx(w[0, i].item() / left)
        left -= w[0, i].item()
    with pytest.raises(ValueError, match="only 3"):
        sample_proposal(w, 4)
    # Drawing the whole pool: every weight is 1 (each point is seen exactly once).
    full_idx, full_q = sample_proposal(torch.ones(1, 5), 5)
    torch.testing.assert_close(lure_weights(full_q, 5), torch.ones(1, 5, dtype=torch.float64))


def test_active_config_errors_name_the_key() -> None:
    from pathlib import Path

    from framework.config import ConfigError, load_job_config

    digits = Path(__file__).resolve().parents[2] / "configs" / "active" / "digits.yaml"
    with pytest.raises(ConfigError, match=r"loop\.strategies: unknown \['dao9'\]"):
        load_job_config(digits, ["loop.strategies=[dao9]"])
    with pytest.raises(ConfigError, match=r"loop\.strategies: bmmal needs model: late_fusion"):
        load_job_config(digits, ["loop.strategies=[bmmal]"])
    with pytest.raises(ConfigError, match=r"dao\.damping"):
        load_job_config(digits, ["dao.damping=-1"])
