"""Aggregation of a jagged id list into one vector per example.

Legend: B = batch, L = total list elements, D = embedding dim, H = heads, d = D / H.
"""

from __future__ import annotations

import torch
from scalefirst_kernels import ops
from torch import nn

from framework.models.ranking.embeddings import init_table_


def _time_embedding(num_time_buckets: int, dim: int) -> nn.Embedding | None:
    if num_time_buckets <= 0:
        return None
    emb = nn.Embedding(num_time_buckets, dim)
    # Same scale as the id rows it is added to; nn.Embedding's N(0, 1) would dominate them and, summed over a
    # list, blow up the quadratic DCN cross layers.
    init_table_(emb.weight)
    return emb


def expand_shared(
    values_LX: torch.Tensor, offsets_B1: torch.Tensor, share_B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row e's list becomes row ``share_B[e]``'s: (values of every row's list, concatenated; offsets [B+1]).

    With locality batching only the first row of an owner carries the owner's list (the others are empty) and the
    per-element work (lookup, time encoding, key/value projection) is done once; this gathers it out per row.
    """
    lengths_B = (offsets_B1[1:] - offsets_B1[:-1])[share_B]
    new_offsets = torch.zeros_like(offsets_B1)
    new_offsets[1:] = torch.cumsum(lengths_B, 0)
    total = int(new_offsets[-1])
    row = torch.repeat_interleave(torch.arange(share_B.numel(), device=share_B.device), lengths_B, output_size=total)
    index = offsets_B1[share_B][row] + torch.arange(total, device=share_B.device) - new_offsets[row]
    return values_LX[index], new_offsets


class TargetedAttentionPooling(nn.Module):
    """One layer of multi-head attention whose single query is the target's embedding (DIN-style).

    The list's keys and values carry a learned relative-time encoding when ``num_time_buckets > 0``.
    ``kernel_backend`` is passed to :func:`scalefirst_kernels.ops.jagged_attention_pooling`; one that cannot run
    here raises at construction.
    """

    def __init__(self, dim: int, num_heads: int, num_time_buckets: int = 0, kernel_backend: ops.Backend = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.time_emb = _time_embedding(num_time_buckets, dim)
        ops.prepare("jagged_attention_pooling", kernel_backend)
        self.kernel_backend = kernel_backend

    def forward(
        self,
        target_BD: torch.Tensor,
        hist_LD: torch.Tensor,
        offsets_B1: torch.Tensor,
        time_L: torch.Tensor | None,
        share_B: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``share_B``: row e attends over row ``share_B[e]``'s list (keys/values computed once per list)."""
        B, D = target_BD.shape
        H = self.num_heads
        if self.time_emb is not None:
            if time_L is None:
                raise ValueError("time buckets are required when the time encoding is enabled")
            hist_LD = hist_LD + self.time_emb(time_L)
        q_BHd = self.q_proj(target_BD).view(B, H, D // H)
        kv_L2D = self.kv_proj(hist_LD)
        if share_B is not None:
            kv_L2D, offsets_B1 = expand_shared(kv_L2D, offsets_B1, share_B)
        k_LD, v_LD = kv_L2D.chunk(2, dim=-1)
        pooled_BHd = ops.jagged_attention_pooling(
            q_BHd, k_LD.reshape(-1, H, D // H), v_LD.reshape(-1, H, D // H), offsets_B1, backend=self.kernel_backend
        )
        return self.out_proj(pooled_BHd.reshape(B, D))


class SumPooling(nn.Module):
    """Parameter-free sum (or mean) of the list's embeddings (plus time encoding if enabled)."""

    def __init__(self, dim: int, mean: bool = False, num_time_buckets: int = 0):
        super().__init__()
        self.mean = mean
        self.time_emb = _time_embedding(num_time_buckets, dim)

    def forward(
        self,
        target_BD: torch.Tensor,
        hist_LD: torch.Tensor,
        offsets_B1: torch.Tensor,
        time_L: torch.Tensor | None,
        share_B: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``share_B``: row e takes row ``share_B[e]``'s pooled list (each list pooled once)."""
        if self.time_emb is not None:
            if time_L is None:
                raise ValueError("time buckets are required when the time encoding is enabled")
            hist_LD = hist_LD + self.time_emb(time_L)
        pooled_BD = ops.jagged_sum_pooling(hist_LD, offsets_B1, mean=self.mean)
        return pooled_BD if share_B is None else pooled_BD[share_B]
