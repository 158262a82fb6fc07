"""Fused jagged targeted attention pooling: Triton forward (online softmax) and backward (recompute).

Legend: B = segments, L = total list elements, H = heads, d = head dim; BL/BH/BD = tile sizes (powers of two).
Same math as kernels/reference/jagged_attention_pooling.py: out_b = sum_j softmax_j(q_b.k_j/sqrt(d) + bias_j) v_j.

One program per segment, all heads at once: a tile of BL list rows is BL contiguous runs of H*d elements, so loads
coalesce even when d is 16. The forward streams the segment once with an online softmax (running max m, running
sum l, rescaled accumulator), never padding to the longest list and never writing the scores. It stores only
lse = m + log(l) per (segment, head), B*H floats, from which the backward recomputes the softmax weights exactly in
a single pass: with delta = dO.out, ds_j = p_j (dO.v_j - delta), dq = sum_j ds_j k_j / sqrt(d), dk_j = ds_j q /
sqrt(d), dv_j = p_j dO, dbias_j = ds_j. Every list row belongs to one segment, so dk/dv/dbias are written by exactly
one program and need no atomics. Math in fp32 whatever the storage dtype (fp32, bf16, fp16).

Registered as ``scalefirst::jagged_attention_pooling_fwd`` / ``_bwd`` custom ops with fake (meta) kernels and an
autograd formula, so ``torch.compile`` traces through without graph breaks. No host synchronization: the loop
bounds are read from ``offsets`` on the device. Double backward is not supported (the backward is not itself
differentiable); HVPs never go through the pooling.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

BLOCK_L = 32
"""List rows per tile: the backward keeps a few [BL, BH, BD] fp32 tiles live, so this stays modest."""


@triton.jit
def _load_rows(base, rows, h, dd, row_ok, hd_ok, stride_l, stride_h):
    """[BL, BH, BD] tile of a [L, H, d] tensor (rows may be out of range: masked to 0), upcast to fp32."""
    ptr = base + rows[:, None, None] * stride_l + h[None, :, None] * stride_h + dd[None, None, :]
    return tl.load(ptr, mask=row_ok[:, None, None] & hd_ok[None, :, :], other=0.0).to(tl.float32)


@triton.jit
def _segment(off_ptr, H, D, BH: tl.constexpr, BD: tl.constexpr):
    """This program's list b, its rows start:end, and the head / head-dim lanes with their masks."""
    b = tl.program_id(0).to(tl.int64)
    start = tl.load(off_ptr + b).to(tl.int64)
    end = tl.load(off_ptr + b + 1).to(tl.int64)
    h = tl.arange(0, BH)
    dd = tl.arange(0, BD)
    h_ok = h < H
    return b, start, end, h, dd, h_ok, h_ok[:, None] & (dd[None, :] < D)


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, off_ptr, out_ptr, lse_ptr,
    H, D, scale,
    HAS_BIAS: tl.constexpr, BL: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    b, start, end, h, dd, h_ok, hd_ok = _segment(off_ptr, H, D, BH, BD)
    q_HD = tl.load(q_ptr + b * H * D + h[:, None] * D + dd[None, :], mask=hd_ok, other=0.0).to(tl.float32) * scale
    m_H = tl.full([BH], float("-inf"), tl.float32)
    l_H = tl.zeros([BH], tl.float32)
    acc_HD = tl.zeros([BH, BD], tl.float32)
    # A while loop, not range(start, end, BL): the interpreter (TRITON_INTERPRET=1, CPU CI) cannot turn a loaded
    # bound into a Python int under NumPy 2, and compiled Triton lowers both to the same scf loop.
    s = start
    while s < end:
        rows = s + tl.arange(0, BL).to(tl.int64)
        row_ok = rows < end
        k_LHD = _load_rows(k_ptr, rows, h, dd, row_ok, hd_ok, H * D, D)
        sc_LH = tl.sum(k_LHD * q_HD[None, :, :], axis=2)
        if HAS_BIAS:
            sc_LH += tl.load(
                bias_ptr + rows[:, None] * H + h[None, :], mask=row_ok[:, None] & h_ok[None, :], other=0.0
            ).to(tl.float32)
        sc_LH = tl.where(row_ok[:, None], sc_LH, float("-inf"))
        # Finite for every head (a tile holds >= 1 valid row; padded heads score 0), so exp(m_H - m_new) is 0 on
        # the first tile and never NaN.
        m_new = tl.maximum(m_H, tl.max(sc_LH, axis=0))
        alpha_H = tl.exp(m_H - m_new)
        p_LH = tl.exp(sc_LH - m_new[None, :])
        l_H = l_H * alpha_H + tl.sum(p_LH, axis=0)
        v_LHD = _load_rows(v_ptr, rows, h, dd, row_ok, hd_ok, H * D, D)
        acc_HD = acc_HD * alpha_H[:, None] + tl.sum(p_LH[:, :, None] * v_LHD, axis=0)
        m_H = m_new
        s += BL
    nonempty = l_H > 0
    out_HD = acc_HD / tl.where(nonempty, l_H, 1.0)[:, None]
    tl.store(out_ptr + b * H * D + h[:, None] * D + dd[None, :], out_HD.to(out_ptr.dtype.element_ty), mask=hd_ok)
    # Empty segment: lse is never used by the backward (no rows), 0 keeps the buffer finite.
    lse_H = tl.where(nonempty, m_H + tl.log(tl.where(nonempty, l_H, 1.0)), 0.0)
    tl.store(lse_ptr + b * H + h, lse_H, mask=h_ok)


@triton.jit
def _bwd_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, off_ptr, out_ptr, lse_ptr, do_ptr,
    dq_ptr, dk_ptr, dv_ptr, dbias_ptr,
    H, D, scale,
    HAS_BIAS: tl.constexpr, BL: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    b, start, end, h, dd, h_ok, hd_ok = _segment(off_ptr, H, D, BH, BD)
    hd = b * H * D + h[:, None] * D + dd[None, :]
    q_HD = tl.load(q_ptr + hd, mask=hd_ok, other=0.0).to(tl.float32)
    do_HD = tl.load(do_ptr + hd, mask=hd_ok, other=0.0).to(tl.float32)
    out_HD = tl.load(out_ptr + hd, mask=hd_ok, other=0.0).to(tl.float32)
    # delta from the stored (rounded) output, as flash-attention does: exact in fp32, within one output ulp else.
    delta_H = tl.sum(do_HD * out_HD, axis=1)
    lse_H = tl.load(lse_ptr + b * H + h, mask=h_ok, other=0.0)
    dq_HD = tl.zeros([BH, BD], tl.float32)
    s = start
    while s < end:
        rows = s + tl.arange(0, BL).to(tl.int64)
        row_ok = rows < end
        lh_ok = row_ok[:, None] & h_ok[None, :]
        k_LHD = _load_rows(k_ptr, rows, h, dd, row_ok, hd_ok, H * D, D)
        sc_LH = tl.sum(k_LHD * q_HD[None, :, :], axis=2) * scale
        if HAS_BIAS:
            sc_LH += tl.load(bias_ptr + rows[:, None] * H + h[None, :], mask=lh_ok, other=0.0).to(tl.float32)
        p_LH = tl.where(lh_ok, tl.exp(sc_LH - lse_H[None, :]), 0.0)
        v_LHD = _load_rows(v_ptr, rows, h, dd, row_ok, hd_ok, H * D, D)
        dp_LH = tl.sum(v_LHD * do_HD[None, :, :], axis=2)
        ds_LH = p_LH * (dp_LH - delta_H[None, :])
        lhd = rows[:, None, None] * H * D + h[None, :, None] * D + dd[None, None, :]
        lhd_ok = row_ok[:, None, None] & hd_ok[None, :, :]
        tl.store(dv_ptr + lhd, (p_LH[:, :, None] * do_HD[None, :, :]).to(dv_ptr.dtype.element_ty), mask=lhd_ok)
        tl.store(dk_ptr + lhd, (ds_LH[:, :, None] * q_HD[None, :, :] * scale).to(dk_ptr.dtype.element_ty), mask=lhd_ok)
        if HAS_BIAS:
            tl.store(dbias_ptr + rows[:, None] * H + h[None, :], ds_LH.to(dbias_ptr.dtype.element_ty), mask=lh_ok)
        dq_HD += tl.sum(ds_LH[:, :, None] * k_LHD, axis=0)
        s += BL
    tl.store(dq_ptr + hd, (dq_HD * scale).to(dq_ptr.dtype.element_ty), mask=hd_ok)


def _tiles(H: int, d: int) -> tuple[int, int]:
    return triton.next_power_of_2(H), triton.next_power_of_2(d)


def _check(q_BHd: torch.Tensor, k_LHd: torch.Tensor, v_LHd: torch.Tensor, offsets_B1: torch.Tensor, bias) -> None:
    B, H, d = q_BHd.shape
    if k_LHd.shape != v_LHd.shape or k_LHd.dim() != 3 or k_LHd.shape[1:] != (H, d):
        raise ValueError(f"k/v must be [L, {H}, {d}], got {tuple(k_LHd.shape)} and {tuple(v_LHd.shape)}")
    if offsets_B1.shape != (B + 1,) or offsets_B1.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"offsets must be int32/int64 [{B + 1}], got {offsets_B1.dtype} {tuple(offsets_B1.shape)}")
    if bias is not None and bias.shape != (k_LHd.shape[0], H):
        raise ValueError(f"bias must be [{k_LHd.shape[0]}, {H}], got {tuple(bias.shape)}")


@torch.library.custom_op("scalefirst::jagged_attention_pooling_fwd", mutates_args=())
def jagged_attention_pooling_fwd(
    q_BHd: torch.Tensor,
    k_LHd: torch.Tensor,
    v_LHd: torch.Tensor,
    offsets_B1: torch.Tensor,
    bias_LH: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out_BHd in v's dtype, lse_BH fp32)."""
    _check(q_BHd, k_LHd, v_LHd, offsets_B1, bias_LH)
    B, H, d = q_BHd.shape
    q, k, v = q_BHd.contiguous(), k_LHd.contiguous(), v_LHd.contiguous()
    bias = bias_LH.contiguous() if bias_LH is not None else k  # dummy pointer, never read (HAS_BIAS=False)
    out = torch.empty((B, H, d), dtype=v_LHd.dtype, device=v_LHd.device)
    lse = torch.empty((B, H), dtype=torch.float32, device=v_LHd.device)
    if B:
        BH, BD = _tiles(H, d)
        _fwd_kernel[(B,)](
            q, k, v, bias, offsets_B1, out, lse, H, d, 1.0 / math.sqrt(d),
            HAS_BIAS=bias_LH is not None, BL=BLOCK_L, BH=BH, BD=BD,
        )  # fmt: skip
    return out, lse


@jagged_attention_pooling_fwd.register_fake
def _(q_BHd, k_LHd, v_LHd, offsets_B1, bias_LH):
    B, H, d = q_BHd.shape
    return v_LHd.new_empty((B, H, d)), q_BHd.new_empty((B, H), dtype=torch.float32)


@torch.library.custom_op("scalefirst::jagged_attention_pooling_bwd", mutates_args=())
def jagged_attention_pooling_bwd(
    q_BHd: torch.Tensor,
    k_LHd: torch.Tensor,
    v_LHd: torch.Tensor,
    offsets_B1: torch.Tensor,
    bias_LH: torch.Tensor | None,
    out_BHd: torch.Tensor,
    lse_BH: torch.Tensor,
    grad_BHd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dbias); dbias is empty [0] without a bias."""
    B, H, d = q_BHd.shape
    q, k, v, g = q_BHd.contiguous(), k_LHd.contiguous(), v_LHd.contiguous(), grad_BHd.contiguous()
    # empty_like, not zeros: offsets cover every row of k/v (offsets[0] = 0, offsets[B] = L, as the reference
    # assumes), so the kernel writes all of dk/dv/dbias and a memset would be a wasted pass over L*H*d.
    alloc = torch.empty_like if B else torch.zeros_like
    bias = bias_LH.contiguous() if bias_LH is not None else k
    # Allocated like the contiguous copies the kernel indexes (a strided bias would get strided dbias otherwise).
    dq, dk, dv = alloc(q), alloc(k), alloc(v)
    dbias = alloc(bias) if bias_LH is not None else q.new_empty((0,))
    if B:
        BH, BD = _tiles(H, d)
        _bwd_kernel[(B,)](
            q, k, v, bias, offsets_B1, out_BHd.contiguous(), lse_BH, g, dq, dk, dv,
            dbias if bias_LH is not None else dq, H, d, 1.0 / math.sqrt(d),
            HAS_BIAS=bias_LH is not None, BL=BLOCK_L, BH=BH, BD=BD,
        )  # fmt: skip
    return dq, dk, dv, dbias


@jagged_attention_pooling_bwd.register_fake
def _(q_BHd, k_LHd, v_LHd, offsets_B1, bias_LH, out_BHd, lse_BH, grad_BHd):
    dbias = torch.empty_like(bias_LH) if bias_LH is not None else q_BHd.new_empty((0,))
    return torch.empty_like(q_BHd), torch.empty_like(k_LHd), torch.empty_like(v_LHd), dbias


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, offsets, bias = inputs
    out, lse = output
    ctx.has_bias = bias is not None
    ctx.save_for_backward(q, k, v, offsets, bias if bias is not None else q.new_empty((0,)), out, lse)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, offsets, bias, out, lse = ctx.saved_tensors
    dq, dk, dv, dbias = jagged_attention_pooling_bwd(
        q, k, v, offsets, bias if ctx.has_bias else None, out, lse, grad_out
    )
    return dq, dk, dv, None, dbias if ctx.has_bias else None


torch.library.register_autograd("scalefirst::jagged_attention_pooling_fwd", _backward, setup_context=_setup_context)


def jagged_attention_pooling(
    q_BHd: torch.Tensor,
    k_LHd: torch.Tensor,
    v_LHd: torch.Tensor,
    offsets_B1: torch.Tensor,
    bias_LH: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused jagged attention pooling; same contract as the reference (empty segments give zeros)."""
    return jagged_attention_pooling_fwd(q_BHd, k_LHd, v_LHd, offsets_B1, bias_LH)[0]
