"""Batch acquisition from per-candidate scores: plain top-k and DAO's Gumbel-perturbed variants (thesis §2.4).

Legend: N = candidates, k = batch. Scores are *losses*: lower is better (DAO's estimated loss after training on
the candidate). With Gumbel noise eps ~ Gumbel(0, 1/beta) added to a deterministic key and the top-k taken, the
batch is a draw without replacement from the Plackett-Luce distribution with weights exp(beta * key) (the
Gumbel-top-k trick), so better candidates are likelier but a batch is not k near-duplicates of the best one.

- ``topk``: the k lowest scores (the ablation baseline, no noise);
- ``softrank``: key = -log(rank), rank 1 = lowest score (depends only on the order);
- ``softmax``: key = -score;
- ``power``: key = log(1 / score) = -log(score), a positive higher-is-better score 1/score (losses are > 0).
"""

from __future__ import annotations

from typing import Literal

import torch

Acquisition = Literal["topk", "softrank", "softmax", "power"]
ACQUISITIONS: tuple[str, ...] = ("topk", "softrank", "softmax", "power")


def gumbel(shape: tuple[int, ...], beta: float, generator: torch.Generator | None, dtype=torch.float64) -> torch.Tensor:
    """Gumbel(0, 1/beta) noise."""
    u = torch.rand(shape, generator=generator, dtype=dtype).clamp_(torch.finfo(dtype).tiny, 1.0)
    return -torch.log(-torch.log(u)) / beta


def acquisition_keys(scores_N: torch.Tensor, method: Acquisition) -> torch.Tensor:
    """The deterministic, higher-is-better key of each candidate."""
    s = scores_N.double()
    if method in ("topk", "softmax"):
        return -s
    if method == "softrank":
        rank = torch.empty_like(s)
        rank[torch.argsort(s, stable=True)] = torch.arange(1, s.numel() + 1, dtype=s.dtype)
        return -torch.log(rank)
    if method == "power":
        if (s <= 0).any():
            raise ValueError("power acquisition needs positive scores (losses)")
        return -torch.log(s)
    raise ValueError(f"unknown acquisition {method!r}; choose {', '.join(ACQUISITIONS)}")


def select_batch(
    scores_N: torch.Tensor,
    k: int,
    method: Acquisition = "softrank",
    *,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices (int64 [min(k, N)]) of the acquired batch, best key first. ``topk`` and k == 1 add no noise
    (the thesis perturbs only batches, k > 1)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    k = min(k, scores_N.numel())
    keys = acquisition_keys(scores_N, method)
    if method != "topk" and k > 1:
        keys = keys + gumbel(tuple(keys.shape), beta, generator)
    return torch.argsort(keys, descending=True, stable=True)[:k]
