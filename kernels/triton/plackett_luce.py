"""Fused position-weighted Plackett-Luce (ListMLE) loss: Triton forward and backward.

Legend: N = rows, M = items per row, T = tiles of BM items per row. Same math as kernels/reference/plackett_luce.py:
loss_n = sum_k mu_k (tail_k - s_k), tail_k = log sum_{j >= k} exp(s_j), s_k = ego[n, order[n, k]].

One program per row. The gather through ``order`` happens in the load, so the sorted score matrix is never
written. The forward walks the row's tiles from the last to the first: a reverse associative scan of
(max, sum-of-exp) pairs gives the suffix log-sum-exp inside a tile, combined with the carry of everything to its
right; the carry entering each tile (two floats) is stored, N*T*2 floats, instead of the N*M tails.
The backward, d loss / d s_j = exp(s_j + R_j) - mu_j with R_j = log sum_{k <= j} mu_k exp(-tail_k), recomputes the
tails from those carries and R by a forward log-space scan. Both exponents are <= log(sum mu) (s_j <= tail_k
for k <= j), so nothing overflows whatever the score scale; math in fp32. The gradient is scattered back through
``order`` (a permutation: every entry written once, no atomics). No host synchronization.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_M = 1024
"""Items per tile; rows longer than this are processed in several tiles with a carried log-sum-exp."""


@triton.jit
def _lse_combine(m1, l1, m2, l2):
    """(max, sum exp(x - max)) pairs; (-inf, 0) is the identity, and two of them stay (-inf, 0), never NaN."""
    m = tl.maximum(m1, m2)
    ms = tl.where(m == float("-inf"), 0.0, m)
    return m, l1 * tl.exp(m1 - ms) + l2 * tl.exp(m2 - ms)


@triton.jit
def _tile(ego_ptr, order_ptr, n, t, M, stride_e, stride_o, BM: tl.constexpr):
    cols = t * BM + tl.arange(0, BM)
    ok = cols < M
    idx = tl.load(order_ptr + n * stride_o + cols, mask=ok, other=0)
    s = tl.load(ego_ptr + n * stride_e + idx, mask=ok, other=0.0).to(tl.float32)
    return cols, ok, idx, tl.where(ok, s, float("-inf"))


@triton.jit
def _suffix_lse(s, ok, cm, cl):
    """log sum_{j >= k} exp(s_j) for every k of the tile, everything right of the tile being (cm, cl)."""
    m_sc, l_sc = tl.associative_scan((s, tl.where(ok, 1.0, 0.0)), 0, _lse_combine, reverse=True)
    m_t, l_t = _lse_combine(m_sc, l_sc, cm, cl)
    return m_t + tl.log(tl.where(ok, l_t, 1.0))


@triton.jit
def _fwd_kernel(ego_ptr, order_ptr, mu_ptr, loss_ptr, cm_ptr, cl_ptr, M, T, stride_e, stride_o, BM: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    one = tl.arange(0, 1)
    cm = tl.full([1], float("-inf"), tl.float32)
    cl = tl.zeros([1], tl.float32)
    acc = tl.zeros([1], tl.float32)
    t = T - 1
    # while, not range(): see jagged_attention_pooling.py (interpreter under NumPy 2).
    while t >= 0:
        tl.store(cm_ptr + n * T + t + one, cm)
        tl.store(cl_ptr + n * T + t + one, cl)
        cols, ok, _idx, s = _tile(ego_ptr, order_ptr, n, t, M, stride_e, stride_o, BM)
        tail = _suffix_lse(s, ok, cm, cl)
        mu = tl.load(mu_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        acc += tl.sum(tl.where(ok, mu * (tail - s), 0.0), axis=0)
        tile_m = tl.max(s, axis=0)
        tile_l = tl.sum(tl.exp(s - tile_m), axis=0)
        cm, cl = _lse_combine(tile_m, tile_l, cm, cl)
        t -= 1
    tl.store(loss_ptr + n + one, acc)


@triton.jit
def _bwd_kernel(
    ego_ptr, order_ptr, mu_ptr, cm_ptr, cl_ptr, g_ptr, dego_ptr, M, T, stride_e, stride_o, stride_d,
    BM: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    g = tl.load(g_ptr + n).to(tl.float32)
    pm = tl.full([1], float("-inf"), tl.float32)  # prefix state of R over the tiles to the left
    pl = tl.zeros([1], tl.float32)
    t = 0
    while t < T:
        cols, ok, idx, s = _tile(ego_ptr, order_ptr, n, t, M, stride_e, stride_o, BM)
        cm = tl.load(cm_ptr + n * T + t)
        cl = tl.load(cl_ptr + n * T + t)
        tail = _suffix_lse(s, ok, cm, cl)
        mu = tl.load(mu_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        x = tl.where(ok & (mu > 0), tl.log(tl.where(mu > 0, mu, 1.0)) - tail, float("-inf"))
        m_sc, l_sc = tl.associative_scan((x, tl.where(x > float("-inf"), 1.0, 0.0)), 0, _lse_combine)
        m_r, l_r = _lse_combine(m_sc, l_sc, pm, pl)
        # exp(s + R) with R = m_r + log(l_r): fold s into the max term first so no factor overflows.
        grad = tl.exp(s + m_r) * l_r - mu
        tl.store(dego_ptr + n * stride_d + idx, (g * grad).to(dego_ptr.dtype.element_ty), mask=ok)
        tile_m = tl.max(x, axis=0)
        tile_l = tl.sum(tl.where(x > float("-inf"), tl.exp(x - tl.where(tile_m > float("-inf"), tile_m, 0.0)), 0.0))
        pm, pl = _lse_combine(tile_m, tile_l, pm, pl)
        t += 1


def _geometry(M: int) -> tuple[int, int]:
    BM = min(triton.next_power_of_2(max(M, 1)), MAX_BLOCK_M)
    return BM, triton.cdiv(M, BM)


@torch.library.custom_op("scalefirst::plackett_luce_fwd", mutates_args=())
def plackett_luce_fwd(
    ego_NM: torch.Tensor, order_NM: torch.Tensor, mu_M: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss_N fp32, carry max [N, T], carry sum [N, T])."""
    if ego_NM.dim() != 2 or order_NM.shape != ego_NM.shape or mu_M.shape != (ego_NM.shape[1],):
        raise ValueError(
            f"ego [N, M], order [N, M] and mu [M] expected, got {tuple(ego_NM.shape)}, {tuple(order_NM.shape)}, "
            f"{tuple(mu_M.shape)}"
        )
    N, M = ego_NM.shape
    BM, T = _geometry(M)
    ego, order, mu = ego_NM.contiguous(), order_NM.contiguous(), mu_M.contiguous()
    loss = torch.zeros(N, dtype=torch.float32, device=ego.device)
    cm = torch.empty((N, T), dtype=torch.float32, device=ego.device)
    cl = torch.empty((N, T), dtype=torch.float32, device=ego.device)
    if N and M:
        _fwd_kernel[(N,)](ego, order, mu, loss, cm, cl, M, T, ego.stride(0), order.stride(0), BM=BM)
    return loss, cm, cl


@plackett_luce_fwd.register_fake
def _(ego_NM, order_NM, mu_M):
    N, M = ego_NM.shape
    T = _geometry(M)[1]
    f32 = {"dtype": torch.float32, "device": ego_NM.device}
    return ego_NM.new_empty((N,), **f32), ego_NM.new_empty((N, T), **f32), ego_NM.new_empty((N, T), **f32)


@torch.library.custom_op("scalefirst::plackett_luce_bwd", mutates_args=())
def plackett_luce_bwd(
    ego_NM: torch.Tensor,
    order_NM: torch.Tensor,
    mu_M: torch.Tensor,
    cm_NT: torch.Tensor,
    cl_NT: torch.Tensor,
    grad_N: torch.Tensor,
) -> torch.Tensor:
    N, M = ego_NM.shape
    BM, T = _geometry(M)
    ego, order, mu = ego_NM.contiguous(), order_NM.contiguous(), mu_M.contiguous()
    dego = torch.empty_like(ego) if N and M else torch.zeros_like(ego)
    if N and M:
        _bwd_kernel[(N,)](
            ego, order, mu, cm_NT, cl_NT, grad_N.contiguous(), dego, M, T, ego.stride(0), order.stride(0),
            dego.stride(0), BM=BM,
        )  # fmt: skip
    return dego


@plackett_luce_bwd.register_fake
def _(ego_NM, order_NM, mu_M, cm_NT, cl_NT, grad_N):
    return torch.empty_like(ego_NM)


def _setup_context(ctx, inputs, output) -> None:
    ego, order, mu = inputs
    _, cm, cl = output
    ctx.save_for_backward(ego, order, mu, cm, cl)
    ctx.mark_non_differentiable(cm, cl)


def _backward(ctx, grad_loss, _gcm, _gcl):
    ego, order, mu, cm, cl = ctx.saved_tensors
    return plackett_luce_bwd(ego, order, mu, cm, cl, grad_loss), None, None


torch.library.register_autograd("scalefirst::plackett_luce_fwd", _backward, setup_context=_setup_context)


def plackett_luce_loss(ego_NM: torch.Tensor, order_NM: torch.Tensor, mu_M: torch.Tensor) -> torch.Tensor:
    """Per-row loss [N], fp32; same contract as the reference (float64 scores are computed in fp32 here)."""
    return plackett_luce_fwd(ego_NM, order_NM, mu_M)[0]
