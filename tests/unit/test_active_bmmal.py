"""BMMAL: two-modality Shapley values by hand, the modulation weights, the modulated gradient embedding, shards."""

from __future__ import annotations

import pytest
import torch

from framework.active.bmmal import (
    bmmal_select,
    contributions,
    modulated_embeddings,
    modulation_weights,
    shapley_two,
)
from framework.active.models import LateFusion


def test_shapley_values_by_hand() -> None:
    """V(a, b) = 3a + b + 2ab (a, b scalars, one row): V(1,1)=6, V(1,0)=3, V(0,1)=1, V(0,0)=0, so
    phi_1 = (6 - 1 + 3 - 0)/2 = 4 and phi_2 = (6 - 3 + 1 - 0)/2 = 2; they sum to V(1,1) - V(0,0) (efficiency)."""

    def value(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (3 * a + b + 2 * a * b).sum(1)

    phi1, phi2 = shapley_two(value, torch.ones(1, 1), torch.ones(1, 1))
    assert phi1.item() == 4.0 and phi2.item() == 2.0
    # Vector modalities, a second row with the roles swapped.
    phi1, phi2 = shapley_two(value, torch.tensor([[1.0], [0.5]]), torch.tensor([[1.0], [2.0]]))
    # Row 2: V(.5,2)=1.5+2+2=5.5, V(.5,0)=1.5, V(0,2)=2, V(0,0)=0 -> phi_1 = (5.5-2+1.5)/2 = 2.5, phi_2 = 3.
    assert phi1.tolist() == [4.0, 2.5] and phi2.tolist() == [2.0, 3.0]


def test_contributions_and_modulation_weights() -> None:
    phi = contributions(torch.tensor([4.0, -1.0, 0.0]), torch.tensor([2.0, 3.0, 0.0]))
    torch.testing.assert_close(phi, torch.tensor([[2 / 3, 1 / 3], [0.25, 0.75], [0.5, 0.5]]))
    w = modulation_weights(phi)
    # Dominant modality keeps 1, the other loses the gap: 1 - (2/3 - 1/3) = 2/3; 1 - (0.75 - 0.25) = 0.5.
    torch.testing.assert_close(w, torch.tensor([[1.0, 2 / 3], [0.5, 1.0], [1.0, 1.0]]))


def test_modulated_embedding_scales_each_modality_block() -> None:
    torch.manual_seed(0)
    model = LateFusion(1, 5, num_classes=3, width=2, m2_hidden=4).double()
    x1, x2 = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    g = modulated_embeddings(model, x1, x2)
    d1, d2 = model.dims
    assert g.shape == (6, 3 * (d1 + d2))
    z1, z2 = model.encode(x1, x2)
    p = torch.softmax(model(x1, x2), 1)
    r = p - torch.nn.functional.one_hot(p.argmax(1), 3).double()
    plain1, plain2 = (r[:, :, None] * z1[:, None, :]).flatten(1), (r[:, :, None] * z2[:, None, :]).flatten(1)
    b1, b2 = g[:, : 3 * d1], g[:, 3 * d1 :]
    # Each block is the plain BADGE block times a per-row weight in [0, 1], and one of the two weights is 1.
    w1 = (b1 * plain1).sum(1) / (plain1 * plain1).sum(1)
    w2 = (b2 * plain2).sum(1) / (plain2 * plain2).sum(1)
    torch.testing.assert_close(b1, w1[:, None] * plain1)
    torch.testing.assert_close(b2, w2[:, None] * plain2)
    assert ((w1 - 1).abs() < 1e-9).logical_or((w2 - 1).abs() < 1e-9).all()
    assert ((w1 >= -1e-9) & (w1 <= 1 + 1e-9) & (w2 >= -1e-9) & (w2 <= 1 + 1e-9)).all()


@pytest.mark.parametrize("shards", [1, 3])
def test_bmmal_select_distinct_and_shard_quotas(shards: int) -> None:
    torch.manual_seed(0)
    model = LateFusion(1, 5, num_classes=3, width=2, m2_hidden=4)
    x1, x2 = torch.randn(40, 1, 8, 8), torch.randn(40, 5)
    picked = bmmal_select(model, x1, x2, 7, torch.Generator().manual_seed(0), shards=shards)
    assert picked.numel() == 7 and picked.unique().numel() == 7 and int(picked.max()) < 40
