"""Fused softmax cross-entropy Hessian-vector product in logit space, K tangents per row (Triton).

Legend: K = tangents, N = rows, C = classes; BK/BC = tile sizes. Same math as
kernels/reference/softmax_ce_hvp.py: out_kn = p_n * (u_kn - p_n . u_kn), p_n = softmax(z_n).

One program per (row, block of BK tangents): three passes over the row's classes in tiles of BC: the online
max / sum of exp (the softmax normalizer, never written out), the dots p . u_k, then the output. p is recomputed
in each pass from the logits instead of being stored: the kernel reads U twice and writes the result once, and
p, p.u never reach memory. Math in fp32. The op is linear in the tangents with a symmetric J, so its gradient
wrt the tangents is the op itself on the upstream gradient; the gradient wrt the logits (a third derivative)
is not implemented and raises.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_C = 1024
BLOCK_K = 16


@triton.jit
def _tile(z_ptr, u_ptr, n, ks, k_ok, c0, N, C, m, den, BC: tl.constexpr):
    """Classes c0:c0+BC of row n: softmax probabilities p [BC] and the tangents u [BK, BC] (fp32), their offsets."""
    cols = c0 + tl.arange(0, BC)
    ok = cols < C
    p = tl.exp(tl.load(z_ptr + n * C + cols, mask=ok, other=float("-inf")).to(tl.float32) - m) / den
    kc = ks[:, None] * N * C + n * C + cols[None, :]
    kc_ok = k_ok[:, None] & ok[None, :]
    return p, tl.load(u_ptr + kc, mask=kc_ok, other=0.0).to(tl.float32), kc, kc_ok


@triton.jit
def _kernel(z_ptr, u_ptr, out_ptr, N, C, K, BK: tl.constexpr, BC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    ks = tl.program_id(1).to(tl.int64) * BK + tl.arange(0, BK)
    k_ok = ks < K
    m = tl.full([1], float("-inf"), tl.float32)
    den = tl.zeros([1], tl.float32)
    # while, not range(): see jagged_attention_pooling.py (interpreter under NumPy 2).
    c0 = 0
    while c0 < C:
        cols = c0 + tl.arange(0, BC)
        z = tl.load(z_ptr + n * C + cols, mask=cols < C, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        den = den * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
        c0 += BC
    dot = tl.zeros([BK], tl.float32)
    c0 = 0
    while c0 < C:
        p, u, _kc, _kc_ok = _tile(z_ptr, u_ptr, n, ks, k_ok, c0, N, C, m, den, BC)
        dot += tl.sum(p[None, :] * u, axis=1)
        c0 += BC
    c0 = 0
    while c0 < C:
        p, u, kc, kc_ok = _tile(z_ptr, u_ptr, n, ks, k_ok, c0, N, C, m, den, BC)
        tl.store(out_ptr + kc, (p[None, :] * (u - dot[:, None])).to(out_ptr.dtype.element_ty), mask=kc_ok)
        c0 += BC


@torch.library.custom_op("scalefirst::softmax_ce_hvp", mutates_args=())
def softmax_ce_hvp(logits_NC: torch.Tensor, tangents_KNC: torch.Tensor) -> torch.Tensor:
    """[K, N, C] in the tangents' dtype."""
    if logits_NC.dim() != 2 or tangents_KNC.dim() != 3 or tangents_KNC.shape[1:] != logits_NC.shape:
        raise ValueError(
            f"logits [N, C] and tangents [K, N, C] expected, got {tuple(logits_NC.shape)} and "
            f"{tuple(tangents_KNC.shape)}"
        )
    K, N, C = tangents_KNC.shape
    z, u = logits_NC.contiguous(), tangents_KNC.contiguous()
    out = torch.empty_like(u)
    if K and N and C:
        BC = min(triton.next_power_of_2(C), MAX_BLOCK_C)
        BK = min(triton.next_power_of_2(K), BLOCK_K)
        _kernel[(N, triton.cdiv(K, BK))](z, u, out, N, C, K, BK=BK, BC=BC)
    return out


@softmax_ce_hvp.register_fake
def _(logits_NC, tangents_KNC):
    return torch.empty_like(tangents_KNC)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad_KNC):
    if ctx.needs_input_grad[0]:
        raise NotImplementedError("softmax_ce_hvp: no gradient wrt the logits (a third derivative of the loss)")
    (logits,) = ctx.saved_tensors
    return None, softmax_ce_hvp(logits, grad_KNC)


torch.library.register_autograd("scalefirst::softmax_ce_hvp", _backward, setup_context=_setup_context)
