"""CLIP evaluation metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from framework.metrics.clip import (
    alignment,
    modality_gap,
    retrieval_recall,
    s_u_eq412,
    wang_isola_uniformity,
    zero_shot_topk,
)

E = torch.eye(3, dtype=torch.float64)


def test_retrieval_perfect_and_shifted() -> None:
    assert retrieval_recall(E, E, ks=(1,)) == {"image_to_text/R@1": 1.0, "text_to_image/R@1": 1.0}
    shifted = E[[1, 2, 0]]  # image j matches text j+1 best; its own text scores 0 and ties with the other
    r = retrieval_recall(E, shifted, ks=(1, 2, 3))
    # own text ties at 0 with one other text, below the 1.0 match: pessimistic rank 2 (0-based) → only R@3 hits
    assert r["image_to_text/R@1"] == 0.0 and r["image_to_text/R@2"] == 0.0 and r["image_to_text/R@3"] == 1.0


def test_retrieval_hand_case() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = torch.tensor([[0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    # i2t: img0 → scores [0.6, 0.0] → own first; img1 → [0.8, 1.0] → own first.  t2i: txt0 → [0.6, 0.8] → own 2nd.
    r = retrieval_recall(img, txt, ks=(1,))
    assert r == {"image_to_text/R@1": 1.0, "text_to_image/R@1": 0.5}


def test_zero_shot_topk() -> None:
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    imgs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # img0 scores [1, 0, .6]: label 0 top-1. img1 scores [0, 1, .8] with label 2: rank 2nd.
    out = zero_shot_topk(imgs, classes, torch.tensor([0, 2]), ks=(1, 2, 3))
    assert out == {"top1": 0.5, "top2": 1.0, "top3": 1.0}


def test_alignment_s_u_gap_by_hand() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = torch.tensor([[0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    assert alignment(img, txt) == pytest.approx((0.6 + 1.0) / 2)
    # mismatched pairs: I0·T1 = 0, I1·T0 = 0.8 → log((e^0 + e^-0.8) / 2)
    assert s_u_eq412(img, txt) == pytest.approx(math.log((1 + math.exp(-0.8)) / 2))
    # centroids (0.5, 0.5) and (0.3, 0.9): distance sqrt(0.04 + 0.16)
    assert modality_gap(img, txt) == pytest.approx(math.sqrt(0.2))
    assert math.isnan(s_u_eq412(img[:1], txt[:1]))
    with pytest.raises(ValueError, match="equal"):
        alignment(img, txt[:1])


def test_s_u_eq412_grows_as_mismatched_pairs_separate() -> None:
    """Its true direction: higher S_U = mismatched image-text pairs less similar (the sign the thesis' eq. 4.12
    gives it; not 'less uniform')."""
    img = torch.eye(3, dtype=torch.float64)
    close = torch.nn.functional.normalize(img + 0.5, dim=1)  # every text leans towards every image
    apart = torch.nn.functional.normalize(img - 0.2, dim=1)  # every text leans away from the other images
    assert s_u_eq412(img, apart) > s_u_eq412(img, img) > s_u_eq412(img, close)


def test_wang_isola_uniformity_by_hand() -> None:
    # Three unit vectors: x0 = (1, 0), x1 = (0, 1), x2 = (-1, 0). Squared distances: |x0-x1|^2 = 2, |x0-x2|^2 = 4,
    # |x1-x2|^2 = 2 → log((e^-4 + e^-8 + e^-4) / 3) with t = 2.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert wang_isola_uniformity(x) == pytest.approx(math.log((2 * math.exp(-4) + math.exp(-8)) / 3))
    assert wang_isola_uniformity(x, t=1.0) == pytest.approx(math.log((2 * math.exp(-2) + math.exp(-4)) / 3))
    # Lower = more uniform: collapsed points give the maximum 0, spread points less.
    assert wang_isola_uniformity(x[[0, 0, 0]]) == pytest.approx(0.0)
    assert wang_isola_uniformity(x) < wang_isola_uniformity(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]]))
    assert math.isnan(wang_isola_uniformity(x[:1]))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        wang_isola_uniformity(x[0])


def test_wang_isola_uniformity_matches_their_reference_code() -> None:
    """Wang & Isola's published one-liner: ``torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()``."""
    x = torch.nn.functional.normalize(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    reference = torch.pdist(x.double(), p=2).pow(2).mul(-2).exp().mean().log()
    assert wang_isola_uniformity(x) == pytest.approx(float(reference), rel=1e-12)
