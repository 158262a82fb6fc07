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
        ops.check_backend("jagged_attention_pooling", kernel_backend)
        self.kernel_backend = kernel_backend

    def forward(
        self, target_BD: torch.Tensor, hist_LD: torch.Tensor, offsets_B1: torch.Tensor, time_L: torch.Tensor | None
    ) -> torch.Tensor:
        B, D = target_BD.shape
        H = self.num_heads
        if self.time_emb is not None:
            if time_L is None:
                raise ValueError("time buckets are required when the time encoding is enabled")
            hist_LD = hist_LD + self.time_emb(time_L)
        q_BHd = self.q_proj(target_BD).view(B, H, D // H)
        k_LD, v_LD = self.kv_proj(hist_LD).chunk(2, dim=-1)
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
        self, target_BD: torch.Tensor, hist_LD: torch.Tensor, offsets_B1: torch.Tensor, time_L: torch.Tensor | None
    ) -> torch.Tensor:
        if self.time_emb is not None:
            if time_L is None:
                raise ValueError("time buckets are required when the time encoding is enabled")
            hist_LD = hist_LD + self.time_emb(time_L)
        return ops.jagged_sum_pooling(hist_LD, offsets_B1, mean=self.mean)
