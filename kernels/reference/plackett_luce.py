"""Position-weighted Plackett-Luce (ListMLE) loss per row: the readable reference.

Legend: N = rows (lists), M = items per row.
loss_n = sum_k mu_k * (log sum_{j >= k} exp(s_{n,j}) - s_{n,k}),  s_{n,k} = ego[n, order[n, k]],
i.e. -sum_k mu_k log pi(y_k | y_<k) for the ranking ``order`` (best first). Math in fp32 at least (float64 kept):
a reverse log-cumsum-exp over half-precision scores would lose the top ranks.
"""

from __future__ import annotations

import torch


def plackett_luce_loss(ego_NM: torch.Tensor, order_NM: torch.Tensor, mu_M: torch.Tensor) -> torch.Tensor:
    """Per-row loss [N] (fp32, or float64 for float64 scores); gradients flow to ``ego`` only.

    Args:
        ego_NM: scores.
        order_NM: int64, each row a permutation of 0..M-1: the reference ranking, best first.
        mu_M: position weights (mu_1 for the top rank first).
    """
    scores_NM = ego_NM.to(torch.promote_types(ego_NM.dtype, torch.float32)).gather(1, order_NM)
    tail_lse_NM = torch.logcumsumexp(scores_NM.flip(1), dim=1).flip(1)
    return ((tail_lse_NM - scores_NM) * mu_M.to(scores_NM.dtype)).sum(1)
