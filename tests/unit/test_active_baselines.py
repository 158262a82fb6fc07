"""Uncertainty baselines against baal's and scikit-activeml's implementations on the same probability arrays,
plus BADGE's gradient embedding and k-means++ seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from baal.active.heuristics import BALD, Certainty, Entropy, Margin
from skactiveml.pool import uncertainty_scores

from framework.active import strategies as S

K = 7


@pytest.fixture
def probs() -> np.ndarray:
    return np.random.default_rng(0).dirichlet(np.ones(5) * 0.7, size=40)


def test_entropy_margin_least_confidence_match_baal_and_scikit_activeml(probs: np.ndarray) -> None:
    p = torch.from_numpy(probs)
    # Same scores up to each library's sign/offset convention ...
    np.testing.assert_allclose(S.entropy(p).numpy(), Entropy().compute_score(probs), rtol=1e-12)
    np.testing.assert_allclose(S.entropy(p).numpy(), uncertainty_scores(probs, method="entropy"), rtol=1e-12)
    np.testing.assert_allclose(S.margin(p).numpy(), -Margin().compute_score(probs), rtol=1e-12)
    np.testing.assert_allclose(S.margin(p).numpy() + 1, uncertainty_scores(probs, method="margin_sampling"), rtol=1e-12)
    np.testing.assert_allclose(S.least_confidence(p).numpy(), 1 - Certainty().compute_score(probs), rtol=1e-12)
    np.testing.assert_allclose(S.least_confidence(p).numpy(), uncertainty_scores(probs, method="least_confident"),
                               rtol=1e-12)  # fmt: skip
    # ... and the same selections.
    for ours, theirs in [(S.entropy, Entropy()), (S.margin, Margin()), (S.least_confidence, Certainty())]:
        assert S.top_k(ours(p), K).tolist() == theirs.get_ranks(probs)[0][:K].tolist()
    for ours, method in [
        (S.entropy, "entropy"),
        (S.margin, "margin_sampling"),
        (S.least_confidence, "least_confident"),
    ]:
        theirs = np.argsort(-uncertainty_scores(probs, method=method), kind="stable")[:K]
        assert S.top_k(ours(p), K).tolist() == theirs.tolist()


def test_bald_matches_baal() -> None:
    mc = np.random.default_rng(1).dirichlet(np.ones(5) * 0.7, size=(40, 8))  # [N, T, C]
    ours = S.bald(torch.from_numpy(mc).permute(1, 0, 2))  # [T, N, C]
    theirs = BALD().compute_score(mc.transpose(0, 2, 1))  # baal: [N, C, T]
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-10, atol=1e-12)
    assert S.top_k(ours, K).tolist() == BALD().get_ranks(mc.transpose(0, 2, 1))[0][:K].tolist()


def test_badge_embedding_is_the_last_layer_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64)
    head = torch.nn.Linear(4, 3).double()
    probs = torch.softmax(head(z), 1).detach()
    emb = S.gradient_embeddings(probs, z)
    for i in range(6):
        head.zero_grad()
        torch.nn.functional.cross_entropy(head(z[i : i + 1]), probs[i : i + 1].argmax(1)).backward()
        torch.testing.assert_close(emb[i], head.weight.grad.flatten())


def test_kmeans_pp_seeding_starts_at_the_largest_norm_and_spreads() -> None:
    g = torch.Generator().manual_seed(0)
    # Three tight clusters far apart plus one far point: seeding 4 centres must take one from each and that point.
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = torch.cat([c + 0.01 * torch.randn(20, 2, generator=g) for c in centers] + [torch.tensor([[30.0, 30.0]])])
    picked = S.kmeans_pp_seeding(pts, 4, torch.Generator().manual_seed(1))
    assert picked[0].item() == 60  # the largest norm
    assert sorted({int(i) // 20 for i in picked[1:]}) == [0, 1, 2]
