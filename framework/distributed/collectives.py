"""Collectives for losses over the global batch (open_clip style)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def gather_features(x_ND: torch.Tensor) -> torch.Tensor:
    """All-gather equal-size per-rank feature blocks into [W*N, D], in rank order, with gradients flowing back.

    Backward sums, for this rank's block, the gradient contributions of every rank's loss. When every rank
    computes the full global-batch loss L, this rank's block therefore receives W * dL/dx; DDP's averaging of
    parameter gradients over the W ranks then yields exactly dL/dtheta of the single-process global loss.
    Identity when torch.distributed is not initialized or the world has one rank.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x_ND
    return torch.cat(dist_fn.all_gather(x_ND), dim=0)


def local_rows(n_local: int) -> slice:
    """This rank's rows in the gathered batch (for local-loss mode: own rows against all columns)."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return slice(rank * n_local, (rank + 1) * n_local)
