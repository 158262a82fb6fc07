"""Position-weighted Plackett-Luce (ListMLE) loss, both backends, vs an independent float64 O(M^2) computation.

Legend: N = rows, M = items per row. On CPU the Triton kernel runs under TRITON_INTERPRET=1 (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scalefirst_kernels import ops

BACKENDS = ["reference", "triton"]

# Against float64 truth on the same (rounded) inputs. Both backends do fp32 math; the loss is a sum of M terms
# of size |s| + log M, so its relative error is a few fp32 ulps (measured <= 1.1e-7 up to M = 1500, scores to
# 150). Gradients are exp(s + R) - mu with |s| up to ~150: exponent rounding ~1e-5 relative of the largest
# gradient (measured <= 1.5e-6 relative; fp32 reference <= 1e-5). bf16/fp16 add the rounding of each gradient
# to the storage dtype (<= 1 ulp, 2^-7 and 2^-10 relative). A wrong position weight or suffix is off by O(1).
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"loss_rtol": 1e-5, "grad_rtol": 1e-5},
    torch.float64: {"loss_rtol": 1e-5, "grad_rtol": 1e-5},
    torch.bfloat16: {"loss_rtol": 1e-5, "grad_rtol": 2**-6},
    torch.float16: {"loss_rtol": 1e-5, "grad_rtol": 2**-9},
}
HYPOTHESIS = settings(max_examples=30, deadline=None, derandomize=True, database=None)


def dense_pl(ego_NM: torch.Tensor, order_NM: torch.Tensor, mu_M: torch.Tensor) -> torch.Tensor:
    """float64 truth from the definition: position k's term is logsumexp over the items ranked k..M-1 minus s_k,
    each suffix reduced on its own with torch.logsumexp (no scan)."""
    N, M = ego_NM.shape
    s_NM = ego_NM.double().gather(1, order_NM)
    later_MM = torch.arange(M)[None, :] >= torch.arange(M)[:, None]  # [k, j]: j ranked at or after k
    masked_NMM = torch.where(later_MM[None], s_NM[:, None, :], float("-inf"))
    tail_NM = torch.logsumexp(masked_NMM, dim=2) if M else s_NM
    return ((tail_NM - s_NM) * mu_M.double()).sum(1)


def _case(N: int, M: int, dtype: torch.dtype, scale: float, decay: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ego = (torch.rand((N, M), generator=g, dtype=torch.float64) * 2 - 1) * scale  # cosine * logit scale
    order = torch.argsort(torch.rand((N, M), generator=g), dim=1)
    k = torch.arange(1, M + 1, dtype=torch.float32)
    mu = 1.0 / torch.log(k + 1.0) if decay else torch.ones(M)
    cot = torch.randn(N, generator=g, dtype=torch.float64)
    return ego.to(dtype), order, mu, cot


def check(N: int, M: int, dtype: torch.dtype, scale: float, decay: bool, backend: str, device: str = "cpu"):
    ego, order, mu, cot = _case(N, M, dtype, scale, decay)
    ego, order, mu, cot = ego.to(device), order.to(device), mu.to(device), cot.to(device)
    e = ego.clone().requires_grad_()
    loss = ops.plackett_luce_loss(e, order, mu, backend=backend)
    assert loss.shape == (N,)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 and backend == "reference" else torch.float32)
    (grad,) = torch.autograd.grad((loss * cot.to(loss.dtype)).sum(), e, allow_unused=True, materialize_grads=True)
    assert grad.dtype == dtype and grad.shape == (N, M)

    t = ego.detach().cpu().double().requires_grad_()
    truth = dense_pl(t, order.cpu(), mu.cpu())
    (truth_grad,) = torch.autograd.grad((truth * cot.cpu()).sum(), t, allow_unused=True, materialize_grads=True)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(loss.cpu().double(), truth.detach(), rtol=tol["loss_rtol"], atol=1e-5)
    g_scale = float(truth_grad.abs().max()) if truth_grad.numel() else 1.0
    torch.testing.assert_close(
        grad.cpu().double(), truth_grad, rtol=tol["grad_rtol"], atol=tol["grad_rtol"] * max(g_scale, 1.0)
    )
    return loss, grad


@pytest.mark.parametrize("backend", BACKENDS)
@HYPOTHESIS
@given(
    N=st.integers(0, 4),
    M=st.sampled_from([0, 1, 2, 3, 7, 16, 33, 100]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    scale=st.sampled_from([1.0, 30.0, 100.0]),
    decay=st.booleans(),
)
@example(N=0, M=5, dtype=torch.float32, scale=1.0, decay=True)  # no rows
@example(N=3, M=0, dtype=torch.float32, scale=1.0, decay=True)  # empty lists: loss 0
@example(N=2, M=1, dtype=torch.float32, scale=1.0, decay=True)  # one item: pi = 1, loss 0, gradient 0
@example(N=3, M=7, dtype=torch.bfloat16, scale=100.0, decay=True)
def test_plackett_luce_matches_definition(
    backend: str, N: int, M: int, dtype: torch.dtype, scale: float, decay: bool
) -> None:
    check(N, M, dtype, scale, decay, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("M", "dtype"), [(1024, torch.float32), (1025, torch.bfloat16), (2049, torch.float32)])
def test_plackett_luce_rows_longer_than_one_tile(backend: str, M: int, dtype: torch.dtype) -> None:
    """Tiles of 1024 items: the suffix log-sum-exp carried across tiles (forward) and the prefix of R (backward)
    must match one scan over the row. The O(M^2) truth is big here, so few rows."""
    check(2, M, dtype, 100.0, True, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plackett_luce_max_batch_row_length(backend: str) -> None:
    """M = 4096, RankCLIP's largest batch: against the float64 reference (the O(M^2) truth would need 1 GB)."""
    ego, order, mu, _ = _case(2, 4096, torch.float32, 100.0, True)
    e = ego.clone().requires_grad_()
    loss = ops.plackett_luce_loss(e, order, mu, backend=backend)
    (grad,) = torch.autograd.grad(loss.sum(), e)
    e64 = ego.double().requires_grad_()
    ref = ops.plackett_luce_loss(e64, order, mu, backend="reference")
    (ref_grad,) = torch.autograd.grad(ref.sum(), e64)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-5 * float(ref_grad.abs().max()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_plackett_luce_single_item_and_agreeing_order(backend: str) -> None:
    _, grad = check(2, 1, torch.float32, 1.0, True, backend)
    # exp(log mu) - mu: zero up to one rounding.
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-6)
    # Scores that agree with the order give a lower loss than reversed ones.
    ego = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    order = torch.arange(4)[None]
    mu = torch.ones(4)
    agree = ops.plackett_luce_loss(ego, order, mu, backend=backend)
    disagree = ops.plackett_luce_loss(ego.flip(1), order, mu, backend=backend)
    assert float(agree) < float(disagree)


def test_triton_plackett_luce_traces_under_torch_compile() -> None:
    ego, order, mu, cot = _case(3, 40, torch.float32, 30.0, True)
    ops.prepare("plackett_luce_loss", "triton")

    def f(e):
        return (ops.plackett_luce_loss(e, order, mu, backend="triton") * cot.float()).sum()

    e1, e2 = ego.clone().requires_grad_(), ego.clone().requires_grad_()
    out_c = torch.compile(f, fullgraph=True, backend="aot_eager")(e1)
    out_e = f(e2)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    torch.testing.assert_close(e1.grad, e2.grad, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("N", "M", "dtype"),
    [(5, 7, torch.float32), (3, 1025, torch.bfloat16), (4, 2049, torch.float16), (2, 0, torch.float32)],
)
def test_plackett_luce_matches_definition_on_cuda(backend: str, N: int, M: int, dtype: torch.dtype) -> None:
    check(N, M, dtype, 100.0, True, backend, device="cuda")
