"""BMMAL: balanced multimodal active learning (thesis ch. 3) on a two-modality late-fusion model.

Legend: N = candidates, C = classes, E_m = modality m's embedding dim, S = shards.
1. Per candidate, the Shapley value of each modality for V = p_yhat of the fused head C_mm (y_hat its arg-max on
   both modalities), a missing modality replaced by a zero vector:
     phi_1 = 1/2 [V(z1, z2) - V(0, z2) + V(z1, 0) - V(0, 0)],  phi_2 symmetric;
   contributions Phi_m = |phi_m| / (|phi_1| + |phi_2|).
2. Modulation w_m = 1 - (max_j Phi_j - Phi_m): the dominant modality keeps weight 1, the weaker one is damped by
   the gap, so BADGE's gradient embedding is not ruled by the modality the model already leans on.
3. Embedding g'_i = ⊕_m w_m (p_i - onehot(y_hat)) ⊗ z_m (BADGE's last-layer gradient, block m scaled by w_m);
   k-means++ seeding picks the batch (first centre: the largest norm). Large pools: S shards (a seeded random
   split), k/S picked in each (the remainder from the first shards).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from framework.active.models import LateFusion
from framework.active.strategies import kmeans_pp_seeding


def shapley_two(
    value: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z1_NE: torch.Tensor, z2_NE: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact two-player Shapley values per row; ``value(a, b)`` -> [N], absent modalities as zero vectors."""
    o1, o2 = torch.zeros_like(z1_NE), torch.zeros_like(z2_NE)
    v12, v1, v2, v0 = value(z1_NE, z2_NE), value(z1_NE, o2), value(o1, z2_NE), value(o1, o2)
    return 0.5 * (v12 - v2 + v1 - v0), 0.5 * (v12 - v1 + v2 - v0)


def contributions(phi1_N: torch.Tensor, phi2_N: torch.Tensor) -> torch.Tensor:
    """Phi [N, 2] = |phi_m| / sum_m |phi_m| (equal shares where both are 0)."""
    a = torch.stack([phi1_N.abs(), phi2_N.abs()], dim=1)
    total = a.sum(1, keepdim=True)
    return torch.where(total > 0, a / total.clamp_min(torch.finfo(a.dtype).tiny), 0.5)


def modulation_weights(phi_N2: torch.Tensor) -> torch.Tensor:
    """w_m = 1 - (max_j Phi_j - Phi_m)."""
    return 1.0 - (phi_N2.max(1, keepdim=True).values - phi_N2)


@torch.no_grad()
def modulated_embeddings(model: LateFusion, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """g' [N, C * (E_1 + E_2)] (see the module doc)."""
    model.eval()
    z1, z2 = model.encode(x1, x2)
    probs = torch.softmax(model.head_mm(torch.cat([z1, z2], 1)), 1)
    y_hat = probs.argmax(1)

    def value(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model.head_mm(torch.cat([a, b], 1)), 1).gather(1, y_hat[:, None])[:, 0]

    w_N2 = modulation_weights(contributions(*shapley_two(value, z1, z2)))
    r_NC = probs - torch.nn.functional.one_hot(y_hat, probs.shape[1]).to(probs.dtype)
    blocks = [(w_N2[:, m, None, None] * r_NC[:, :, None] * z[:, None, :]).flatten(1) for m, z in enumerate((z1, z2))]
    return torch.cat(blocks, dim=1)


def bmmal_select(
    model: LateFusion, x1: torch.Tensor, x2: torch.Tensor, k: int, generator: torch.Generator, shards: int = 1
) -> torch.Tensor:
    """Positions of the k acquired candidates."""
    g = modulated_embeddings(model, x1, x2)
    n = g.shape[0]
    if shards <= 1:
        return kmeans_pp_seeding(g, k, generator)
    parts = torch.randperm(n, generator=generator).tensor_split(shards)
    quotas = [k // shards + (1 if s < k % shards else 0) for s in range(shards)]
    picked = [part[kmeans_pp_seeding(g[part], q, generator)] for part, q in zip(parts, quotas, strict=True) if q]
    return torch.cat(picked) if picked else torch.zeros(0, dtype=torch.int64)
