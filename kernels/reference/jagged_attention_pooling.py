"""Targeted multi-head attention pooling over jagged lists: the readable fp32 reference.

Legend: B = batch (segments), L = total list elements (sum of lengths), H = heads, d = head dim.
One query per segment (the target's embedding) attends over that segment's keys/values; no padding to the
global max length. Empty segments pool to zeros. An optional additive per-position, per-head bias (e.g. a
relative-time encoding) is added to the scores before the softmax.
"""

from __future__ import annotations

import math

import torch


def segment_ids(offsets_B1: torch.Tensor, total: int) -> torch.Tensor:
    """Segment index of every jagged element: offsets [B+1] → seg [L] (int64)."""
    lengths_B = offsets_B1[1:] - offsets_B1[:-1]
    return torch.repeat_interleave(
        torch.arange(lengths_B.numel(), device=offsets_B1.device), lengths_B, output_size=total
    )


def jagged_attention_pooling(
    q_BHd: torch.Tensor,
    k_LHd: torch.Tensor,
    v_LHd: torch.Tensor,
    offsets_B1: torch.Tensor,
    bias_LH: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax_j(q_b · k_j / sqrt(d) + bias_j) weighted sum of v_j over j in segment b, per head.

    Args:
        q_BHd: queries, one per segment.
        k_LHd: keys of all segments, concatenated.
        v_LHd: values, aligned with keys.
        offsets_B1: int64 [B+1], segment b is rows offsets[b]:offsets[b+1].
        bias_LH: optional additive score bias per element and head (differentiable).

    Returns:
        out_BHd in the dtype of ``v_LHd`` (math in fp32).
    """
    B, H, d = q_BHd.shape
    L = k_LHd.shape[0]
    out_dtype = v_LHd.dtype
    # No early return for L == 0: the general path yields zeros that stay connected to q/k/v in autograd, so
    # DDP still sees (zero) gradients for the projections when a whole batch has empty lists.
    q, k, v = q_BHd.float(), k_LHd.float(), v_LHd.float()
    seg_L = segment_ids(offsets_B1, L)
    scores_LH = (k * q.index_select(0, seg_L)).sum(-1) / math.sqrt(d)
    if bias_LH is not None:
        scores_LH = scores_LH + bias_LH.float()
    # Subtract the per-segment max before exp: scores of long lists would otherwise overflow in fp16/bf16 callers.
    max_BH = torch.full((B, H), float("-inf"), device=q.device).scatter_reduce(
        0, seg_L[:, None].expand(L, H), scores_LH, reduce="amax", include_self=True
    )
    p_LH = torch.exp(scores_LH - max_BH.index_select(0, seg_L).detach())
    denom_BH = torch.zeros((B, H), device=q.device).index_add(0, seg_L, p_LH)
    w_LH = p_LH / denom_BH.index_select(0, seg_L)
    out = torch.zeros((B, H, d), device=q.device).index_add(0, seg_L, w_LH[..., None] * v)
    return out.to(out_dtype)


def jagged_sum_pooling(values_LD: torch.Tensor, offsets_B1: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """Sum (or mean) of each segment's rows; empty segments give zeros."""
    B = offsets_B1.numel() - 1
    L, D = values_LD.shape
    seg_L = segment_ids(offsets_B1, L)
    out_BD = values_LD.new_zeros((B, D)).index_add(0, seg_L, values_LD)
    if mean:
        lengths_B = (offsets_B1[1:] - offsets_B1[:-1]).clamp(min=1).to(values_LD.dtype)
        out_BD = out_BD / lengths_B[:, None]
    return out_BD
