"""Jagged attention / sum pooling, both backends, vs an independent padded dense float64 computation; ops dispatch.

Legend: B = segments, L = total list elements, H = heads, d = head dim, D = feature dim, M = longest segment.
One test body per property, parameterized over the backends; on CPU the Triton kernels run under
TRITON_INTERPRET=1 (tests/conftest.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scalefirst_kernels import ops
from scalefirst_kernels.ops import BackendUnavailableError
from scalefirst_kernels.reference.jagged_attention_pooling import jagged_sum_pooling, segment_ids

BACKENDS = ["reference", "triton"]

# Tolerances against the float64 dense computation on the same (rounded) inputs, per input dtype, both backends.
# Both do their math in fp32, so float64 inputs only get fp32 accuracy and share the fp32 row; scores here are
# O(1..10) and an online softmax over <= 1100 terms loses a few fp32 ulps, far inside 1e-5. In bf16/fp16 the
# error is the final rounding of each output/gradient to the storage dtype: <= 1 ulp (the interpreter rounds
# toward zero, a full ulp, where CUDA rounds to nearest, half an ulp), i.e. 2^-7 relative for bf16 and 2^-10 for
# fp16, with the same absolute floor for values near 0; the tables allow 2 ulps. A wrong segment, a missing
# 1/sqrt(d) or a dropped max-subtraction move outputs by O(0.1..1).
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float64: {"rtol": 1e-5, "atol": 1e-5},
    torch.bfloat16: {"rtol": 2**-6, "atol": 2**-6},
    torch.float16: {"rtol": 2**-9, "atol": 2**-9},
}

HYPOTHESIS = settings(max_examples=25, deadline=None, derandomize=True, database=None)
lengths_st = st.lists(st.integers(0, 9), min_size=0, max_size=6)
heads_st = st.sampled_from([1, 2, 3, 4])
head_dim_st = st.sampled_from([1, 3, 8, 16])
dtype_st = st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])


# ---------------------------------------------------------------- independent dense computation


def _offsets_B1(lengths: list[int], device: str = "cpu") -> torch.Tensor:
    return torch.tensor(
        [0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int64, device=device
    )


def dense_attention_pooling(
    q_BHd: torch.Tensor,
    k_LHd: torch.Tensor,
    v_LHd: torch.Tensor,
    lengths: list[int],
    bias_LH: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pad every segment to M, masked softmax per head with torch.softmax, weighted sum. Empty segment -> 0."""
    B, H, d = q_BHd.shape
    M = max(lengths, default=0)
    k_BMHd = q_BHd.new_zeros((B, M, H, d))
    v_BMHd = q_BHd.new_zeros((B, M, H, d))
    bias_BMH = q_BHd.new_zeros((B, M, H))
    mask_BM = torch.zeros((B, M), dtype=torch.bool, device=q_BHd.device)
    start = 0
    for b, n in enumerate(lengths):
        k_BMHd[b, :n] = k_LHd[start : start + n]
        v_BMHd[b, :n] = v_LHd[start : start + n]
        if bias_LH is not None:
            bias_BMH[b, :n] = bias_LH[start : start + n]
        mask_BM[b, :n] = True
        start += n
    scores_BHM = torch.einsum("bhd,bmhd->bhm", q_BHd, k_BMHd) / math.sqrt(d) + bias_BMH.transpose(1, 2)
    mask_BHM = mask_BM[:, None, :].expand(B, H, M)
    # Fully-masked rows (empty segments) get finite constant scores instead of -inf (softmax of all -inf is
    # NaN, and NaN would leak into gradients through torch.where); their weights are zeroed by the mask.
    empty_BHM = ~mask_BHM.any(-1, keepdim=True).expand(B, H, M)
    fill = torch.where(empty_BHM, 0.0, float("-inf")).to(scores_BHM.dtype)
    p_BHM = torch.softmax(torch.where(mask_BHM, scores_BHM, fill), dim=-1) * mask_BHM
    return torch.einsum("bhm,bmhd->bhd", p_BHM, v_BMHd)


def _inputs(lengths: list[int], H: int, d: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0, bias=False):
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), sum(lengths)
    q = torch.randn((B, H, d), generator=g, dtype=torch.float64)
    k = torch.randn((L, H, d), generator=g, dtype=torch.float64)
    v = torch.randn((L, H, d), generator=g, dtype=torch.float64)
    cot = torch.randn((B, H, d), generator=g, dtype=torch.float64)  # upstream gradient for the VJP
    out = [t.to(device=device, dtype=dtype) for t in (q, k, v, cot)]
    if bias:
        out.append(torch.randn((L, H), generator=g, dtype=torch.float64).to(device=device, dtype=dtype))
    return out


def _grads(out: torch.Tensor, cot: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """d<out, cot>/d inputs; an output outside the graph (nothing to differentiate) counts as zero gradient."""
    if not out.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    return list(torch.autograd.grad((out * cot.to(out.dtype)).sum(), inputs, allow_unused=True, materialize_grads=True))


def pool(backend: str, q, k, v, offsets, bias=None) -> torch.Tensor:
    return ops.jagged_attention_pooling(q, k, v, offsets, bias, backend=backend)


def check_parity(
    lengths: list[int], H: int, d: int, dtype: torch.dtype, backend: str, device: str = "cpu", bias: bool = False
):
    q, k, v, cot, *b = _inputs(lengths, H, d, dtype, device, bias=bias)
    offsets = _offsets_B1(lengths, device)
    inputs = [q, k, v, *b]

    mine = [x.clone().requires_grad_() for x in inputs]
    out = pool(backend, *mine[:3], offsets, *mine[3:])
    grads = _grads(out, cot, mine)

    # The truth: float64 dense computation on the very same input values.
    ref_in = [x.detach().double().requires_grad_() for x in inputs]
    ref = dense_attention_pooling(*ref_in[:3], lengths, *ref_in[3:])
    ref_grads = _grads(ref, cot.double(), ref_in)

    B = len(lengths)
    assert out.shape == (B, H, d)
    assert out.dtype == dtype
    assert out.device.type == torch.device(device).type
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    for name, g, rg in zip(["q", "k", "v", "bias"], grads, ref_grads, strict=False):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g.double(), rg, **tol, msg=lambda m, n=name: f"{backend}: grad wrt {n}: {m}")

    # Empty segments pool to exactly zero and their queries get exactly zero gradient.
    empty_B = torch.tensor([n == 0 for n in lengths], dtype=torch.bool, device=device)
    if empty_B.any():
        assert torch.equal(out[empty_B], torch.zeros_like(out[empty_B]))
        assert torch.equal(grads[0][empty_B], torch.zeros_like(grads[0][empty_B]))
    return out, grads


# ---------------------------------------------------------------- attention pooling parity


@pytest.mark.parametrize("backend", BACKENDS)
@HYPOTHESIS
@given(lengths=lengths_st, H=heads_st, d=head_dim_st, dtype=dtype_st, bias=st.booleans())
@example(lengths=[], H=2, d=3, dtype=torch.float32, bias=False)  # B = 0
@example(lengths=[0, 0, 0], H=4, d=8, dtype=torch.float32, bias=True)  # all segments empty (L = 0)
@example(lengths=[0, 0], H=1, d=1, dtype=torch.float64, bias=False)
@example(lengths=[1], H=1, d=1, dtype=torch.float32, bias=False)  # single length-1 segment: weight exactly 1
@example(lengths=[1, 0, 9, 1, 3, 0], H=3, d=3, dtype=torch.bfloat16, bias=True)
@example(lengths=[9, 9, 9, 9, 9, 9], H=4, d=16, dtype=torch.float16, bias=False)
def test_attention_pooling_matches_dense_forward_and_grads(
    backend: str, lengths: list[int], H: int, d: int, dtype: torch.dtype, bias: bool
) -> None:
    check_parity(lengths, H, d, dtype, backend, bias=bias)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("lengths", "dtype"),
    [
        ([1024, 0, 31, 33], torch.float32),  # the maximum length; 33 = one tile + 1 row (tiles of 32)
        ([1025, 1, 100], torch.bfloat16),  # one row past a power of two
        ([0, 1024, 7], torch.float16),
    ],
)
def test_attention_pooling_long_lists_BHd(backend: str, lengths: list[int], dtype: torch.dtype) -> None:
    """Lists of L_max = 1024 and more: the online softmax across many tiles must equal one softmax."""
    check_parity(lengths, H=2, d=24, dtype=dtype, backend=backend, bias=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_pooling_length1_segment_returns_its_value_BHd(backend: str, dtype: torch.dtype) -> None:
    """A one-element list has softmax weight 1: the output is that value and q gets no gradient."""
    out, (gq, _gk, gv) = check_parity([1, 1], H=2, d=3, dtype=dtype, backend=backend)
    _, _, v, cot = _inputs([1, 1], 2, 3, dtype)
    torch.testing.assert_close(out, v, **TOLERANCES[dtype])
    torch.testing.assert_close(gq, torch.zeros_like(gq), rtol=0, atol=1e-6)
    torch.testing.assert_close(gv, cot, **TOLERANCES[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_pooling_empty_segments_zero_output_and_no_gradient_BHd(backend: str) -> None:
    """Keys/values of non-empty segments never influence an empty segment's (zero) output, in value or gradient."""
    lengths = [0, 3, 0, 2]
    q, k, v, _, bias = _inputs(lengths, 2, 4, torch.float32, bias=True)
    q, k, v, bias = (x.requires_grad_() for x in (q, k, v, bias))
    out = pool(backend, q, k, v, _offsets_B1(lengths), bias)
    assert torch.equal(out[[0, 2]], torch.zeros(2, 2, 4))
    grads = torch.autograd.grad(out[[0, 2]].sum(), [q, k, v, bias], allow_unused=True, materialize_grads=True)
    assert not any(g.any() for g in grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_empty_output_stays_in_autograd_graph_BHd(backend: str) -> None:
    q = torch.randn(3, 2, 4, requires_grad=True)
    k = torch.zeros(0, 2, 4, requires_grad=True)
    v = torch.zeros(0, 2, 4, requires_grad=True)
    out = pool(backend, q, k, v, _offsets_B1([0, 0, 0]))
    assert out.requires_grad
    (gq,) = torch.autograd.grad(out.sum(), [q])
    assert torch.equal(gq, torch.zeros_like(q))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [100.0, -100.0, 1e4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_pooling_large_scores_stay_finite_BHd(backend: str, scale: float, dtype: torch.dtype) -> None:
    """q * 100: scores of hundreds overflow exp() in fp32 (> 88) or underflow it to 0 for every key
    (0 / 0) unless the per-segment max is subtracted first (the online softmax rescales as it goes)."""
    lengths = [5, 1, 0, 40, 3]
    q, k, v, cot = _inputs(lengths, 2, 8, dtype)
    q = q * scale
    q_a, k_a, v_a = (x.clone().requires_grad_() for x in (q, k, v))
    out = pool(backend, q_a, k_a, v_a, _offsets_B1(lengths))
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_pooling_bf16_close_to_fp32_inputs_BHd(backend: str) -> None:
    """Against fp32 on the original (unrounded) inputs: bf16 rounding of q and k (<= 2^-8 relative each) moves
    a score of size ~3 by ~2.4e-2 and the softmax weights about as much relatively; with |v| ~ 1..3 and the output
    rounding this stays within ~4e-2, while a bug (wrong segment, missing 1/sqrt(d)) moves outputs by O(1)."""
    lengths = [4, 0, 1, 9, 2]
    q, k, v, _ = _inputs(lengths, 2, 8, torch.float32)
    offsets = _offsets_B1(lengths)
    out16 = pool(backend, q.bfloat16(), k.bfloat16(), v.bfloat16(), offsets)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), pool("reference", q, k, v, offsets), rtol=6e-2, atol=6e-2)
    assert torch.equal(out16[1], torch.zeros(2, 8, dtype=torch.bfloat16))


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_pooling_non_contiguous_inputs_BHd(backend: str) -> None:
    """Views with other strides (a transposed bias, k/v slices of a fused kv projection) give the contiguous
    inputs' outputs and gradients, and gradients of the views' shapes."""
    lengths = [3, 0, 40, 1]
    q, k, v, cot, bias = _inputs(lengths, 2, 4, torch.float32, bias=True)
    offsets = _offsets_B1(lengths)
    kv = torch.cat([k, v], dim=-1).requires_grad_()  # [L, H, 2d]: k and v are strided halves
    bias_HL = bias.T.contiguous().requires_grad_()
    qg = q.clone().requires_grad_()
    out = pool(backend, qg, kv[..., :4], kv[..., 4:], offsets, bias_HL.T)
    grads = torch.autograd.grad((out * cot).sum(), [qg, kv, bias_HL])
    ins = [x.clone().requires_grad_() for x in (q, k, v, bias)]
    ref = pool("reference", *ins[:3], offsets, ins[3])
    ref_grads = torch.autograd.grad((ref * cot).sum(), ins)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], ref_grads[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], torch.cat(ref_grads[1:3], dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[2], ref_grads[3].T, rtol=1e-5, atol=1e-5)


def test_triton_pooling_traces_under_torch_compile_without_graph_breaks() -> None:
    """custom_op + register_fake + register_autograd: fullgraph compile (aot_eager: no C++ toolchain needed)
    traces forward and backward through the kernel and gives the eager result."""
    lengths = [3, 0, 40, 1]
    q, k, v, cot, bias = _inputs(lengths, 2, 8, torch.float32, bias=True)
    offsets = _offsets_B1(lengths)

    def f(q, k, v, bias):
        return (pool("triton", q, k, v, offsets, bias) * cot).sum()

    ops.prepare("jagged_attention_pooling", "triton")
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ins_c = [x.clone().requires_grad_() for x in (q, k, v, bias)]
    ins_e = [x.clone().requires_grad_() for x in (q, k, v, bias)]
    loss_c, loss_e = compiled(*ins_c), f(*ins_e)
    loss_c.backward()
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e, rtol=0, atol=0)
    for a, b in zip(ins_c, ins_e, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


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


def test_ops_auto_picks_reference_on_cpu_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    lengths = [3, 0, 1, 5]
    q, k, v, _ = _inputs(lengths, 2, 3, torch.float32)
    offsets = _offsets_B1(lengths)
    ops._AUTO_LOGGED.clear()
    with caplog.at_level("INFO", logger="scalefirst_kernels.ops"):
        auto = ops.jagged_attention_pooling(q, k, v, offsets)
        ops.jagged_attention_pooling(q, k, v, offsets)
    assert [r.getMessage() for r in caplog.records] == [
        "jagged_attention_pooling: backend=auto chose reference for cpu tensors"
    ]
    assert torch.equal(auto, ops.jagged_attention_pooling(q, k, v, offsets, backend="reference"))

    values = torch.randn(9, 4)
    for mean in (False, True):
        a = ops.jagged_sum_pooling(values, offsets, mean=mean)
        assert torch.equal(a, jagged_sum_pooling(values, offsets, mean=mean))


def test_ops_triton_unavailable_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v, _ = _inputs([2, 1], 1, 3, torch.float32)
    offsets = _offsets_B1([2, 1])
    # No Triton kernel for sum pooling: asking for one is an error, not a silent fallback.
    with pytest.raises(BackendUnavailableError, match="'triton' is not implemented"):
        ops.jagged_sum_pooling(torch.randn(3, 2), offsets, backend="triton")
    # Kernels defined outside the interpreter cannot take CPU tensors.
    import scalefirst_kernels.triton as tri

    monkeypatch.setattr(tri, "INTERPRETED", False)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        ops.jagged_attention_pooling(q, k, v, offsets, backend="triton")
    # Triton not installed: refused at config-check time already.
    monkeypatch.setattr(ops, "triton_installed", lambda: False)
    with pytest.raises(BackendUnavailableError, match="not installed"):
        ops.check_backend("jagged_attention_pooling", "triton")
    assert issubclass(BackendUnavailableError, RuntimeError)


@pytest.mark.parametrize("backend", ["cuda", "Triton", "", "torch", "pytorch"])
def test_ops_unknown_backend_raises_value_error(backend: str) -> None:
    q, k, v, _ = _inputs([2], 1, 3, torch.float32)
    offsets = _offsets_B1([2])
    with pytest.raises(ValueError, match="unknown backend"):
        ops.jagged_attention_pooling(q, k, v, offsets, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown backend"):
        ops.jagged_sum_pooling(torch.randn(2, 2), offsets, backend=backend)  # type: ignore[arg-type]


# ---------------------------------------------------------------- GPU (the same bodies on CUDA tensors)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(lengths=lengths_st, H=heads_st, d=head_dim_st, dtype=dtype_st, bias=st.booleans())
@example(lengths=[], H=2, d=3, dtype=torch.float32, bias=False)
@example(lengths=[0, 0, 0], H=4, d=8, dtype=torch.float32, bias=True)
@example(lengths=[1, 0, 9], H=2, d=3, dtype=torch.float64, bias=False)
def test_attention_pooling_matches_dense_on_cuda(
    backend: str, lengths: list[int], H: int, d: int, dtype: torch.dtype, bias: bool
) -> None:
    check_parity(lengths, H, d, dtype, backend, device="cuda", bias=bias)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_attention_pooling_long_lists_on_cuda(backend: str, dtype: torch.dtype) -> None:
    check_parity([1024, 0, 1, 1025, 257] * 8, H=4, d=48, dtype=dtype, backend=backend, device="cuda", bias=True)
