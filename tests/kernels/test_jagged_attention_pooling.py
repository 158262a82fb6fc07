"""Jagged attention / sum pooling reference vs an independent padded dense computation, plus ops dispatch.

Legend: B = segments, L = total list elements, H = heads, d = head dim, D = feature dim, M = longest segment.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scalefirst_kernels import ops
from scalefirst_kernels.ops import BackendUnavailableError
from scalefirst_kernels.reference.jagged_attention_pooling import (
    jagged_attention_pooling,
    jagged_sum_pooling,
    segment_ids,
)

# Tolerances of the reference against the float64 dense computation below, per input dtype.
# The reference does its math in fp32 whatever the input dtype (documented: "math in fp32"), so float64
# inputs only get fp32 accuracy and share the fp32 row; the scores here are O(1..10), softmax and a
# weighted sum of <= 9 terms lose a few fp32 ulps (~1e-7 relative each), far inside 1e-5.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float64: {"rtol": 1e-5, "atol": 1e-5},
}

HYPOTHESIS = settings(max_examples=40, deadline=None, derandomize=True, database=None)
lengths_st = st.lists(st.integers(0, 9), min_size=0, max_size=6)
heads_st = st.sampled_from([1, 2, 4])
head_dim_st = st.sampled_from([1, 3, 8])
dtype_st = st.sampled_from([torch.float32, torch.float64])


# ---------------------------------------------------------------- independent dense computation


def _offsets_B1(lengths: list[int], device: str = "cpu") -> torch.Tensor:
    return torch.tensor(
        [0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int64, device=device
    )


def dense_attention_pooling(
    q_BHd: torch.Tensor, k_LHd: torch.Tensor, v_LHd: torch.Tensor, lengths: list[int]
) -> torch.Tensor:
    """Pad every segment to M, masked softmax per head with torch.softmax, weighted sum. Empty segment -> 0."""
    B, H, d = q_BHd.shape
    M = max(lengths, default=0)
    k_BMHd = q_BHd.new_zeros((B, M, H, d))
    v_BMHd = q_BHd.new_zeros((B, M, H, d))
    mask_BM = torch.zeros((B, M), dtype=torch.bool, device=q_BHd.device)
    start = 0
    for b, n in enumerate(lengths):
        k_BMHd[b, :n] = k_LHd[start : start + n]
        v_BMHd[b, :n] = v_LHd[start : start + n]
        mask_BM[b, :n] = True
        start += n
    scores_BHM = torch.einsum("bhd,bmhd->bhm", q_BHd, k_BMHd) / math.sqrt(d)
    mask_BHM = mask_BM[:, None, :].expand(B, H, M)
    # Fully-masked rows (empty segments) get finite constant scores instead of -inf (softmax of all -inf is
    # NaN, and NaN would leak into gradients through torch.where); their weights are zeroed by the mask.
    empty_BHM = ~mask_BHM.any(-1, keepdim=True).expand(B, H, M)
    fill = torch.where(empty_BHM, 0.0, float("-inf")).to(scores_BHM.dtype)
    p_BHM = torch.softmax(torch.where(mask_BHM, scores_BHM, fill), dim=-1) * mask_BHM
    return torch.einsum("bhm,bmhd->bhd", p_BHM, v_BMHd)


def _inputs(lengths: list[int], H: int, d: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), sum(lengths)
    q = torch.randn((B, H, d), generator=g, dtype=torch.float64)
    k = torch.randn((L, H, d), generator=g, dtype=torch.float64)
    v = torch.randn((L, H, d), generator=g, dtype=torch.float64)
    cot = torch.randn((B, H, d), generator=g, dtype=torch.float64)  # upstream gradient for the VJP
    return [t.to(device=device, dtype=dtype) for t in (q, k, v, cot)]


def _grads(out: torch.Tensor, cot: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """d<out, cot>/d inputs; an output outside the graph (nothing to differentiate) counts as zero gradient."""
    if not out.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    return list(torch.autograd.grad((out * cot.to(out.dtype)).sum(), inputs, allow_unused=True, materialize_grads=True))


def check_parity(lengths: list[int], H: int, d: int, dtype: torch.dtype, device: str = "cpu"):
    q, k, v, cot = _inputs(lengths, H, d, dtype, device)
    offsets = _offsets_B1(lengths, device)

    q_a, k_a, v_a = (x.clone().requires_grad_() for x in (q, k, v))
    out = jagged_attention_pooling(q_a, k_a, v_a, offsets)
    grads = _grads(out, cot, [q_a, k_a, v_a])

    # The truth: float64 dense computation on the very same input values.
    q_r, k_r, v_r = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = dense_attention_pooling(q_r, k_r, v_r, lengths)
    ref_grads = _grads(ref, cot.double(), [q_r, k_r, v_r])

    B = len(lengths)
    assert out.shape == (B, H, d)
    assert out.dtype == dtype
    assert out.device.type == torch.device(device).type
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g.double(), rg, **tol, msg=lambda m, n=name: f"grad wrt {n}: {m}")

    # Empty segments pool to exactly zero and their queries get exactly zero gradient.
    empty_B = torch.tensor([n == 0 for n in lengths], dtype=torch.bool, device=device)
    if empty_B.any():
        assert torch.equal(out[empty_B], torch.zeros_like(out[empty_B]))
        assert torch.equal(grads[0][empty_B], torch.zeros_like(grads[0][empty_B]))
    return out, grads


# ---------------------------------------------------------------- attention pooling parity


@HYPOTHESIS
@given(lengths=lengths_st, H=heads_st, d=head_dim_st, dtype=dtype_st)
@example(lengths=[], H=2, d=3, dtype=torch.float32)  # B = 0
@example(lengths=[0, 0, 0], H=4, d=8, dtype=torch.float32)  # all segments empty (L = 0)
@example(lengths=[0, 0], H=1, d=1, dtype=torch.float64)
@example(lengths=[1], H=1, d=1, dtype=torch.float32)  # single length-1 segment: weight exactly 1
@example(lengths=[1, 0, 9, 1, 3, 0], H=2, d=3, dtype=torch.float64)
@example(lengths=[9, 9, 9, 9, 9, 9], H=4, d=8, dtype=torch.float32)
def test_attention_pooling_matches_dense_forward_and_grads(
    lengths: list[int], H: int, d: int, dtype: torch.dtype
) -> None:
    check_parity(lengths, H, d, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_pooling_length1_segment_returns_its_value_BHd(dtype: torch.dtype) -> None:
    """A one-element list has softmax weight 1: the output is that value and q gets no gradient."""
    out, (gq, _gk, gv) = check_parity([1, 1], H=2, d=3, dtype=dtype)
    _, _, v, cot = _inputs([1, 1], 2, 3, dtype)
    torch.testing.assert_close(out, v, **TOLERANCES[dtype])
    torch.testing.assert_close(gq, torch.zeros_like(gq), rtol=0, atol=1e-6)
    torch.testing.assert_close(gv, cot, **TOLERANCES[dtype])


def test_attention_pooling_empty_segments_zero_output_and_no_gradient_BHd() -> None:
    """Keys/values of non-empty segments never influence an empty segment's (zero) output, in value or gradient."""
    lengths = [0, 3, 0, 2]
    q, k, v, _ = _inputs(lengths, 2, 4, torch.float32)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = jagged_attention_pooling(q, k, v, _offsets_B1(lengths))
    assert torch.equal(out[[0, 2]], torch.zeros(2, 2, 4))
    gq, gk, gv = torch.autograd.grad(out[[0, 2]].sum(), [q, k, v], allow_unused=True, materialize_grads=True)
    assert not gq.any() and not gk.any() and not gv.any()


def test_all_empty_output_stays_in_autograd_graph_BHd() -> None:
    q = torch.randn(3, 2, 4, requires_grad=True)
    k = torch.zeros(0, 2, 4, requires_grad=True)
    v = torch.zeros(0, 2, 4, requires_grad=True)
    out = jagged_attention_pooling(q, k, v, _offsets_B1([0, 0, 0]))
    assert out.requires_grad
    (gq,) = torch.autograd.grad(out.sum(), [q])
    assert torch.equal(gq, torch.zeros_like(q))


@pytest.mark.parametrize("scale", [100.0, -100.0, 1e4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_pooling_large_scores_stay_finite_BHd(scale: float, dtype: torch.dtype) -> None:
    """q * 100: scores of hundreds overflow exp() in fp32 (> 88) or underflow it to 0 for every key
    (0 / 0) unless the per-segment max is subtracted first."""
    lengths = [5, 1, 0, 9, 3]
    q, k, v, cot = _inputs(lengths, 2, 8, dtype)
    q = q * scale
    q_a, k_a, v_a = (x.clone().requires_grad_() for x in (q, k, v))
    out = jagged_attention_pooling(q_a, k_a, v_a, _offsets_B1(lengths))
    grads = _grads(out, cot, [q_a, k_a, v_a])
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() for g in grads)
    ref = dense_attention_pooling(q.double(), k.double(), v.double(), lengths)
    # Scores this large make softmax (nearly) one-hot; the output is then the argmax key's value.
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    # Check that the test really is in the overflow regime it claims to cover.
    seg = segment_ids(_offsets_B1(lengths), sum(lengths))
    scores = (k.double() * q.double()[seg]).sum(-1) / math.sqrt(8)
    assert scores.abs().max() > 88.0


def test_attention_pooling_bf16_output_dtype_and_close_to_fp32_BHd() -> None:
    lengths = [4, 0, 1, 9, 2]
    H, d = 2, 8
    q, k, v, _ = _inputs(lengths, H, d, torch.float32)
    offsets = _offsets_B1(lengths)
    q16, k16, v16 = (x.bfloat16() for x in (q, k, v))

    out16 = jagged_attention_pooling(q16, k16, v16, offsets)
    assert out16.dtype == torch.bfloat16
    assert out16.shape == (len(lengths), H, d)

    # (a) Against fp32 on the same bf16-rounded inputs: the reference upcasts and computes in fp32, so the only
    # extra error is the final rounding of the output to bf16 (8 significand bits: relative error <= 2^-9).
    # One full bf16 ulp, 2^-8 relative (plus the same absolute for values near 0), bounds that.
    same_inputs = jagged_attention_pooling(q16.float(), k16.float(), v16.float(), offsets)
    torch.testing.assert_close(out16.float(), same_inputs, rtol=2**-8, atol=2**-8)

    # (b) Against fp32 on the original fp32 inputs: bf16 rounding of q and k (<= 2^-9 relative each) moves a
    # score q.k/sqrt(d) of size ~3 by ~2 * 3 * 2^-9 ~ 1.2e-2, which moves softmax weights by about that much
    # relatively; with |v| ~ 1 to 3 and the output rounding this stays within ~3e-2. A bug (e.g. wrong
    # segment, missing 1/sqrt(d)) moves outputs by O(1), so 5e-2 still separates right from wrong.
    fp32 = jagged_attention_pooling(q, k, v, offsets)
    torch.testing.assert_close(out16.float(), fp32, rtol=5e-2, atol=5e-2)
    # An empty segment is still exactly zero.
    assert torch.equal(out16[1], torch.zeros(H, d, dtype=torch.bfloat16))


# ---------------------------------------------------------------- sum / mean pooling


@HYPOTHESIS
@given(
    lengths=lengths_st,
    D=st.sampled_from([1, 3, 8]),
    dtype=dtype_st,
    mean=st.booleans(),
)
@example(lengths=[], D=3, dtype=torch.float32, mean=True)
@example(lengths=[0, 0], D=1, dtype=torch.float64, mean=True)
@example(lengths=[1, 0, 9], D=8, dtype=torch.float32, mean=False)
def test_sum_pooling_matches_loop_BD(lengths: list[int], D: int, dtype: torch.dtype, mean: bool) -> None:
    g = torch.Generator().manual_seed(1)
    values = torch.randn((sum(lengths), D), generator=g, dtype=dtype).requires_grad_()
    out = jagged_sum_pooling(values, _offsets_B1(lengths), mean=mean)
    assert out.shape == (len(lengths), D)
    assert out.dtype == dtype

    expected, start = [], 0
    for n in lengths:
        seg = values.detach()[start : start + n]
        expected.append(seg.sum(0) / n if (mean and n) else seg.sum(0) if n else torch.zeros(D, dtype=dtype))
        start += n
    ref = torch.stack(expected) if expected else torch.zeros((0, D), dtype=dtype)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-6, atol=1e-6)

    # Gradient: every element of segment b receives cot[b] (divided by its length for mean).
    if values.numel():
        cot = torch.randn(out.shape, generator=g, dtype=dtype)
        (gv,) = torch.autograd.grad((out * cot).sum(), [values])
        lengths_t = torch.tensor(lengths, dtype=torch.int64)
        expected_g = cot.repeat_interleave(lengths_t, dim=0)
        if mean:
            expected_g = expected_g / lengths_t.repeat_interleave(lengths_t)[:, None].to(dtype)
        torch.testing.assert_close(gv, expected_g, rtol=1e-6, atol=1e-6)


def test_segment_ids_L() -> None:
    assert segment_ids(_offsets_B1([2, 0, 1, 3]), 6).tolist() == [0, 0, 2, 3, 3, 3]
    assert segment_ids(_offsets_B1([0, 0]), 0).tolist() == []


# ---------------------------------------------------------------- ops dispatch


def test_ops_auto_and_reference_identical() -> None:
    lengths = [3, 0, 1, 5]
    q, k, v, _ = _inputs(lengths, 2, 3, torch.float32)
    offsets = _offsets_B1(lengths)
    auto = ops.jagged_attention_pooling(q, k, v, offsets)
    pt = ops.jagged_attention_pooling(q, k, v, offsets, backend="reference")
    assert torch.equal(auto, pt)
    torch.testing.assert_close(auto.double(), dense_attention_pooling(q.double(), k.double(), v.double(), lengths))

    values = torch.randn(9, 4)
    for mean in (False, True):
        a = ops.jagged_sum_pooling(values, offsets, mean=mean)
        p = ops.jagged_sum_pooling(values, offsets, mean=mean, backend="reference")
        assert torch.equal(a, p)
        assert torch.equal(a, jagged_sum_pooling(values, offsets, mean=mean))


def test_ops_triton_raises_backend_unavailable() -> None:
    q, k, v, _ = _inputs([2, 1], 1, 3, torch.float32)
    offsets = _offsets_B1([2, 1])
    with pytest.raises(BackendUnavailableError, match="triton"):
        ops.jagged_attention_pooling(q, k, v, offsets, backend="triton")
    with pytest.raises(BackendUnavailableError, match="triton"):
        ops.jagged_sum_pooling(torch.randn(3, 2), offsets, backend="triton")
    # Must not be a silent fallback in disguise: it is a RuntimeError subclass, not ValueError.
    assert issubclass(BackendUnavailableError, RuntimeError)


@pytest.mark.parametrize("backend", ["cuda", "Triton", "", "torch", "pytorch"])
def test_ops_unknown_backend_raises_value_error(backend: str) -> None:
    q, k, v, _ = _inputs([2], 1, 3, torch.float32)
    offsets = _offsets_B1([2])
    with pytest.raises(ValueError, match="unknown backend"):
        ops.jagged_attention_pooling(q, k, v, offsets, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown backend"):
        ops.jagged_sum_pooling(torch.randn(2, 2), offsets, backend=backend)  # type: ignore[arg-type]


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(lengths=lengths_st, H=heads_st, d=head_dim_st, dtype=dtype_st)
@example(lengths=[], H=2, d=3, dtype=torch.float32)
@example(lengths=[0, 0, 0], H=4, d=8, dtype=torch.float32)
@example(lengths=[1, 0, 9], H=2, d=3, dtype=torch.float64)
def test_attention_pooling_matches_dense_on_cuda(lengths: list[int], H: int, d: int, dtype: torch.dtype) -> None:
    check_parity(lengths, H, d, dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_attention_pooling_cuda_matches_cpu_bf16_and_large_scores_BHd() -> None:
    lengths = [4, 0, 1, 9, 2]
    q, k, v, _ = _inputs(lengths, 2, 8, torch.float32)
    for scale in (1.0, 100.0):
        cpu = jagged_attention_pooling(q * scale, k, v, _offsets_B1(lengths))
        gpu = jagged_attention_pooling((q * scale).cuda(), k.cuda(), v.cuda(), _offsets_B1(lengths, "cuda"))
        assert torch.isfinite(gpu).all()
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
    out16 = jagged_attention_pooling(
        q.cuda().bfloat16(), k.cuda().bfloat16(), v.cuda().bfloat16(), _offsets_B1(lengths, "cuda")
    )
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(
        out16.float().cpu(), jagged_attention_pooling(q, k, v, _offsets_B1(lengths)), rtol=5e-2, atol=5e-2
    )
