"""Baseline acquisition strategies: random, least confidence, minimum margin, maximum entropy, BALD (MC dropout),
Core-Set (k-center greedy) and BADGE (k-means++ seeding on last-layer gradient embeddings).

Legend: N = unlabeled candidates, L = labeled, C = classes, E = embedding dim, T = MC-dropout samples.
Uncertainty scores are higher-is-more-informative; selections take the top k with a stable sort (ties in index
order), so they are deterministic. Scores follow the usual definitions (and baal's / scikit-activeml's: tested
equal on the same probability arrays).
"""

from __future__ import annotations

import torch
from torch import nn


def least_confidence(probs_NC: torch.Tensor) -> torch.Tensor:
    return 1.0 - probs_NC.max(1).values


def margin(probs_NC: torch.Tensor) -> torch.Tensor:
    """Negative gap between the two most likely classes (small gap = informative)."""
    top2 = probs_NC.topk(2, dim=1).values
    return -(top2[:, 0] - top2[:, 1])


def entropy(probs_NC: torch.Tensor) -> torch.Tensor:
    return -(probs_NC * torch.log(probs_NC.clamp_min(1e-12))).sum(1)


def bald(probs_TNC: torch.Tensor) -> torch.Tensor:
    """Mutual information between the label and the weights: H(E_T p) - E_T H(p)."""
    return entropy(probs_TNC.mean(0)) - torch.stack([entropy(p) for p in probs_TNC]).mean(0)


@torch.no_grad()
def mc_dropout_probs(model: nn.Module, xs: tuple[torch.Tensor, ...], samples: int, seed: int) -> torch.Tensor:
    """[T, N, C] softmax outputs with dropout active (the models have no batch norm, so train() only adds dropout)."""
    torch.manual_seed(seed)
    model.train()
    try:
        return torch.stack([torch.softmax(model(*xs), dim=1) for _ in range(samples)])
    finally:
        model.eval()


def top_k(scores_N: torch.Tensor, k: int) -> torch.Tensor:
    return torch.argsort(scores_N, descending=True, stable=True)[:k]


def k_center_greedy(emb_NE: torch.Tensor, centers_LE: torch.Tensor, k: int) -> torch.Tensor:
    """Core-Set (Sener & Savarese): repeatedly take the point farthest from every centre so far (labeled points
    and those picked); a 2-approximation of the k-center covering radius."""
    n = emb_NE.shape[0]
    if centers_LE.shape[0]:
        dist_N = torch.cdist(emb_NE, centers_LE).min(1).values
    else:
        dist_N = torch.full((n,), float("inf"), dtype=emb_NE.dtype)
    picked: list[int] = []
    for _ in range(min(k, n)):
        i = int(torch.argmax(dist_N)) if torch.isfinite(dist_N).any() else 0
        picked.append(i)
        dist_N = torch.minimum(dist_N, torch.cdist(emb_NE, emb_NE[i : i + 1])[:, 0])
        dist_N[picked] = -1.0
    return torch.tensor(picked, dtype=torch.int64)


def gradient_embeddings(probs_NC: torch.Tensor, emb_NE: torch.Tensor) -> torch.Tensor:
    """BADGE: the gradient of the cross-entropy at the pseudo-label argmax p wrt the last layer's weights,
    (p - onehot(y_hat)) ⊗ z, flattened to [N, C*E]."""
    onehot = torch.nn.functional.one_hot(probs_NC.argmax(1), probs_NC.shape[1]).to(probs_NC.dtype)
    return ((probs_NC - onehot)[:, :, None] * emb_NE[:, None, :]).flatten(1)


def kmeans_pp_seeding(x_ND: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: the first centre is the point of largest norm (as BADGE's code does), then each next one
    is drawn with probability proportional to its squared distance to the nearest centre so far."""
    n = x_ND.shape[0]
    k = min(k, n)
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    picked = [int(torch.argmax(x_ND.norm(dim=1)))]
    d2_N = ((x_ND - x_ND[picked[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2_N.sum()
        if total <= 0:  # every point coincides with a centre: take the first unpicked, deterministically
            rest = torch.ones(n, dtype=torch.bool)
            rest[picked] = False
            i = int(torch.nonzero(rest)[0])
        else:
            i = int(torch.multinomial(d2_N.double() / total, 1, generator=generator))
        picked.append(i)
        d2_N = torch.minimum(d2_N, ((x_ND - x_ND[i]) ** 2).sum(1))
        d2_N[picked] = 0.0
    return torch.tensor(picked, dtype=torch.int64)


UNCERTAINTY = {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}
