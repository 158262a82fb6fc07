"""LURE: an unbiased estimate of a pool's mean loss from a few points drawn by an active proposal (thesis
eqs. 2.10-2.15, after Farquhar et al. 2021).

Legend: K = independent draws (e.g. one per DAO candidate), N = pool points, n = points drawn (n_C).
Points are drawn sequentially without replacement with probability proportional to a positive proposal weight
(q(m) = w_{i_m} / sum of the weights still in the pool at step m). The weighted mean
  R = (1/n) sum_m v_m loss_{i_m},  v_m = 1 + (N - n)/(N - m) * (1/((N - m + 1) q(m)) - 1)   (m = 1..n)
has expectation mean(loss) over the pool, whatever the proposal (tests/unit/test_active_lure.py). A plain mean of
the same proposal-drawn points is biased toward the points the proposal favours.
Sequential sampling proportional to w without replacement is the Gumbel-top-k of log w, which vectorizes over K.
"""

from __future__ import annotations

import torch

from framework.active.acquisition import gumbel


def sample_proposal(
    weights_KN: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n points per row without replacement, sequentially proportional to ``weights`` (>= 0; a zero weight
    excludes a point). Returns (indices int64 [K, n] in draw order, q [K, n]: each one's probability at its step)."""
    if (weights_KN < 0).any():
        raise ValueError("proposal weights must be >= 0")
    w = weights_KN.double()
    available = (w > 0).sum(1)
    if w.shape[0] and n > int(available.min()):
        raise ValueError(f"cannot draw {n} points: a row has only {int(available.min())} with positive weight")
    keys = torch.log(w) + gumbel(tuple(w.shape), 1.0, generator)
    idx_Kn = torch.topk(keys, n, dim=1).indices
    w_Kn = w.gather(1, idx_Kn)
    remaining_Kn = w.sum(1, keepdim=True) - torch.cumsum(w_Kn, 1) + w_Kn  # weight left before each step
    return idx_Kn, w_Kn / remaining_Kn


def lure_weights(q_Kn: torch.Tensor, N: int) -> torch.Tensor:
    """v_m for draws with step probabilities q from a pool of N points."""
    n = q_Kn.shape[-1]
    if n > N:
        raise ValueError(f"n={n} draws from a pool of N={N}")
    m = torch.arange(1, n + 1, dtype=q_Kn.dtype, device=q_Kn.device)
    # m = N (the last point of an exhausted pool) has N - m = 0; its coefficient (N - n)/(N - m) then multiplies
    # 1/q - 1 = 0 (q = 1 for the only point left), so it is defined as 0.
    coef = torch.where(m < N, (N - n) / (N - m).clamp_min(1), 0.0)
    return 1.0 + coef * (1.0 / ((N - m + 1) * q_Kn) - 1.0)


def lure_estimate(loss_Kn: torch.Tensor, q_Kn: torch.Tensor, N: int) -> torch.Tensor:
    """R per row: the LURE estimate of the pool's mean loss."""
    return (lure_weights(q_Kn, N) * loss_Kn).mean(-1)
