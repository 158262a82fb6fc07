"""Hessian-vector products (torch.func, both modes, multi-RHS), the fused softmax-CE logit-space product (both
backends) and the batched CG / LiSSA inverse-HVP solvers.

Legend: K = right-hand sides, P = parameters (flattened), N = examples, C = classes, D = features.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scalefirst_kernels import hvp as H
from scalefirst_kernels import ops
from torch import nn

BACKENDS = ["reference", "triton"]
MODES = ["fwd_rev", "rev_rev"]

# softmax_ce_hvp against float64 truth on the same inputs: fp32 math over <= 1025 classes loses a few ulps of
# max|u| (1e-6 relative is ~10 ulps); bf16/fp16 add the output rounding (<= 1 ulp: 2^-7, 2^-10 relative) on
# values up to max|u|. A wrong sign of the rank-one term or an unnormalized p is off by O(p).
CE_TOLERANCES: dict[torch.dtype, float] = {
    torch.float32: 1e-6,
    torch.float64: 1e-6,
    torch.bfloat16: 2**-6,
    torch.float16: 2**-9,
}


def _ce_truth(logits_NC: torch.Tensor, u_KNC: torch.Tensor) -> torch.Tensor:
    """Explicit per-row Hessian matrices J_n = diag(p) - p p^T in float64, then J_n u."""
    p = torch.softmax(logits_NC.double(), -1)
    J_NCC = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("ncd,knd->knc", J_NCC, u_KNC.double())


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(
    K=st.sampled_from([1, 3, 17, 64]),
    N=st.integers(0, 5),
    C=st.sampled_from([1, 2, 10, 33]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    scale=st.sampled_from([1.0, 30.0]),
)
@example(K=2, N=3, C=1025, dtype=torch.float32, scale=10.0)  # past one tile of 1024 classes
@example(K=0, N=3, C=4, dtype=torch.float32, scale=1.0)
@example(K=17, N=2, C=1, dtype=torch.float32, scale=1.0)  # one class: p = 1, J = 0
def test_softmax_ce_hvp_matches_explicit_hessian(
    backend: str, K: int, N: int, C: int, dtype: torch.dtype, scale: float
) -> None:
    g = torch.Generator().manual_seed(K * 1000 + N * 10 + C)
    logits = (torch.randn(N, C, generator=g, dtype=torch.float64) * scale).to(dtype)
    u = torch.randn(K, N, C, generator=g, dtype=torch.float64).to(dtype)
    out = ops.softmax_ce_hvp(logits, u, backend=backend)
    assert out.shape == (K, N, C) and out.dtype == dtype
    truth = _ce_truth(logits, u)
    tol = CE_TOLERANCES[dtype]
    umax = float(u.abs().max()) if u.numel() else 0.0
    torch.testing.assert_close(out.double(), truth, rtol=tol, atol=tol * max(1.0, umax))


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_ce_hvp_gradient_wrt_tangents_is_the_op_itself(backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, generator=g, dtype=torch.float64)
    u = torch.randn(3, 4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(3, 4, 7, generator=g, dtype=torch.float64)
    (gu,) = torch.autograd.grad((ops.softmax_ce_hvp(logits, u, backend=backend) * cot).sum(), u)
    torch.testing.assert_close(gu, _ce_truth(logits, cot), rtol=1e-6, atol=1e-6)  # J symmetric: J^T cot = J cot


def test_triton_softmax_ce_hvp_refuses_a_logits_gradient() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    out = ops.softmax_ce_hvp(logits, torch.randn(1, 2, 3), backend="triton")
    with pytest.raises(NotImplementedError, match="third derivative"):
        out.sum().backward()


# ---------------------------------------------------------------- HVPs of modules vs torch.autograd.functional


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(6, 8), nn.Linear(8, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.head = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.head(F.softplus(self.conv(x)).flatten(1))


def _problem(kind: str):
    torch.manual_seed(0)
    if kind == "mlp":
        model, x = MLP().double(), torch.randn(10, 6, dtype=torch.float64)
        y = torch.randint(0, 3, (10,))
    else:
        model, x = CNN().double(), torch.randn(6, 2, 4, 4, dtype=torch.float64)
        y = torch.randint(0, 4, (6,))
    return model, x, y


def _reference_hvp(model, x, y, names, v_flat):
    """torch.autograd.functional.hvp on a flat vector of the chosen parameters."""
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    fixed = {n: p.detach() for n, p in named.items() if n not in names}

    def f(flat):
        parts, start = {}, 0
        for n, shp in zip(names, shapes, strict=True):
            parts[n] = flat[start : start + shp.numel()].reshape(shp)
            start += shp.numel()
        return F.cross_entropy(torch.func.functional_call(model, {**fixed, **parts}, (x,)), y)

    primal = torch.cat([named[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hvp(f, primal, v_flat)[1]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("kind", "subset"), [("mlp", None), ("mlp", ["fc2.weight", "out.weight", "out.bias"]), ("cnn", None)]
)
def test_hvp_and_multi_rhs_match_autograd_functional(mode: str, kind: str, subset) -> None:
    model, x, y = _problem(kind)
    f, primals = H.module_loss(model, lambda out: F.cross_entropy(out, y), [x], params=subset)
    names = list(primals)
    P = sum(p.numel() for p in primals.values())
    V_KP = torch.randn(5, P, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    truth = torch.stack([_reference_hvp(model, x, y, names, v) for v in V_KP])
    one = H.flatten(H.hvp(f, primals, H.unflatten(V_KP[0], primals), mode))
    torch.testing.assert_close(one, truth[0], rtol=1e-10, atol=1e-12)
    multi = H.flatten(H.hvp_multi(f, primals, H.unflatten(V_KP, primals), mode), batch_dims=1)
    torch.testing.assert_close(multi, truth, rtol=1e-10, atol=1e-12)
    # The subset really restricts the Hessian (its size) and the Hessian is not trivially zero.
    assert P == sum(p.numel() for n, p in model.named_parameters() if subset is None or n in subset)
    assert truth.abs().max() > 1e-3


def test_hvp_rejects_unknown_parameters_and_modes() -> None:
    model, x, y = _problem("mlp")
    with pytest.raises(KeyError, match="fc9.weight"):
        H.module_loss(model, lambda out: F.cross_entropy(out, y), [x], params=["fc9.weight"])
    f, primals = H.module_loss(model, lambda out: F.cross_entropy(out, y), [x])
    with pytest.raises(ValueError, match="unknown HVP mode"):
        H.hvp(f, primals, primals, mode="forward")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_softmax_ce_hvp_matches_autograd_functional(backend: str, bias: bool) -> None:
    """The fused output-layer product on K vectors equals the exact Hessian of mean CE wrt (W, b)."""
    g = torch.Generator().manual_seed(2)
    N, D, C, K = 9, 5, 4, 6
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    W = torch.randn(C, D, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64) if bias else None
    VW = torch.randn(K, C, D, generator=g, dtype=torch.float64)
    Vb = torch.randn(K, C, generator=g, dtype=torch.float64) if bias else None
    hw, hb = H.linear_softmax_ce_hvp(x, W, b, VW, Vb, backend=backend)

    def f(w, bb=None):
        return F.cross_entropy(x @ w.T + (bb if bb is not None else 0.0), y)

    tol = {"rtol": 1e-6, "atol": 1e-7}  # fp32 math in the triton kernel; the reference keeps float64
    for k in range(K):
        if bias:
            _, (tw, tb) = torch.autograd.functional.hvp(f, (W, b), (VW[k], Vb[k]))
            torch.testing.assert_close(hb[k], tb, **tol)
        else:
            _, tw = torch.autograd.functional.hvp(f, W, VW[k])
        torch.testing.assert_close(hw[k], tw, **tol)
    assert (hb is None) == (not bias)


# ---------------------------------------------------------------- inverse-HVP solvers


def _spd(P: int, cond: float, seed: int = 0) -> torch.Tensor:
    """Symmetric positive definite, eigenvalues log-spaced in [1/cond, 1] * 10."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
    eig = 10.0 * torch.logspace(-torch.log10(torch.tensor(cond)).item(), 0, P, dtype=torch.float64)
    return (Q * eig) @ Q.T


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_conjugate_gradient_recovers_inverse_hvp(damping: float) -> None:
    """Stated tolerance: relative error <= 1e-8 of the exact solve in float64 within 3P iterations (CG is exact
    in P steps in exact arithmetic; condition number 1e3)."""
    P, K = 30, 8
    A = _spd(P, 1e3)
    b = torch.randn(K, P, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b[3] = 0.0  # a zero right-hand side: solved at iteration 0, must stay exactly 0 (no 0/0)
    res = H.conjugate_gradient(lambda V: V @ A, b, damping=damping, iterations=3 * P, rtol=1e-12)
    exact = torch.linalg.solve(A + damping * torch.eye(P, dtype=A.dtype), b.T).T
    err = (res.x_KP - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-300)
    assert err.max() < 1e-8, err
    assert torch.isfinite(res.x_KP).all() and torch.equal(res.x_KP[3], torch.zeros(P, dtype=A.dtype))
    assert res.iterations_K[3] == 0 and (res.iterations_K <= 3 * P).all()
    # Converged rows froze before the budget ran out (device-side masks), and their residual is tiny.
    assert (res.iterations_K[[0, 1, 2, 4, 5, 6, 7]] < 3 * P).all()
    assert res.residual_K.max() < 1e-10


def test_conjugate_gradient_few_iterations_is_not_converged_and_says_so() -> None:
    P = 30
    A = _spd(P, 1e4)
    b = torch.randn(2, P, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    res = H.conjugate_gradient(lambda V: V @ A, b, iterations=3)
    assert (res.iterations_K == 3).all() and (res.residual_K > 1e-3).all()


def test_lissa_recovers_damped_inverse_hvp() -> None:
    """Fixed point (H + scale*damping I)^-1 b; with eigenvalues in [0.01, 10], scale 12, damping 0.01 the error
    contracts by <= 1 - 0.01/12 - 0.01 per step: 3000 steps give < 1e-10; stated tolerance 1e-8 relative."""
    P, K = 25, 4
    A = _spd(P, 1e3)
    b = torch.randn(K, P, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    res = H.lissa(lambda V: V @ A, b, damping=0.01, scale=12.0, depth=3000)
    exact = torch.linalg.solve(A + 12.0 * 0.01 * torch.eye(P, dtype=A.dtype), b.T).T
    err = (res.x_KP - exact).norm(dim=1) / exact.norm(dim=1)
    assert err.max() < 1e-8, err
    assert res.residual_K.max() < 1e-8
    # Too shallow a series is visibly short of the answer (the test can tell converged from not).
    short = H.lissa(lambda V: V @ A, b, damping=0.01, scale=12.0, depth=20)
    assert short.residual_K.min() > 1e-2


@pytest.mark.parametrize("mode", MODES)
def test_solvers_on_a_module_hessian(mode: str) -> None:
    """CG and LiSSA on the MLP's damped loss Hessian (hvp_matvec, K = 3) against the explicit Hessian's solve."""
    model, x, y = _problem("mlp")
    subset = ["out.weight", "out.bias", "fc2.weight"]
    f, primals = H.module_loss(model, lambda out: F.cross_entropy(out, y), [x], params=subset)
    P = sum(p.numel() for p in primals.values())
    Hm = torch.autograd.functional.hessian(lambda flat: f(H.unflatten(flat, primals)), H.flatten(primals))
    b = torch.randn(3, P, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    # The Hessian is indefinite (tanh hidden layer) and singular in the output layer (softmax shift invariance):
    # damping past its most negative eigenvalue makes the system positive definite, as influence methods do.
    eig = torch.linalg.eigvalsh(Hm)
    assert eig.min() < 0  # the case that needs damping really is covered
    damping = 0.1 - float(eig.min())
    exact = torch.linalg.solve(Hm + damping * torch.eye(P, dtype=Hm.dtype), b.T).T
    matvec = H.hvp_matvec(f, primals, mode)
    cg = H.conjugate_gradient(matvec, b, damping=damping, iterations=2 * P, rtol=1e-12)
    torch.testing.assert_close(cg.x_KP, exact, rtol=1e-7, atol=1e-9)
    scale = (float(eig.max()) + damping) * 1.5
    li = H.lissa(matvec, b, damping=damping / scale, scale=scale, depth=1500)
    torch.testing.assert_close(li.x_KP, exact, rtol=1e-5, atol=1e-6)


def test_solvers_have_no_host_synchronization() -> None:
    """fullgraph compile fails on any .item(), bool(tensor) or data-dependent Python branch inside the loops:
    the device-side masks are what let it pass."""
    P = 12
    A = _spd(P, 10.0).float()
    b = torch.randn(3, P, generator=torch.Generator().manual_seed(5))

    def both(bb):
        cg = H.conjugate_gradient(lambda V: V @ A, bb, damping=0.1, iterations=5)
        li = H.lissa(lambda V: V @ A, bb, damping=0.01, scale=15.0, depth=5)
        return cg.x_KP, li.x_KP

    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(b), both(b), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_ce_hvp_and_solvers_on_cuda(backend: str) -> None:
    logits = torch.randn(64, 1000, device="cuda") * 5
    u = torch.randn(64, 64, 1000, device="cuda")
    out = ops.softmax_ce_hvp(logits, u, backend=backend)
    torch.testing.assert_close(out.double().cpu(), _ce_truth(logits.cpu(), u.cpu()), rtol=1e-5, atol=1e-5)
    A = _spd(40, 100.0).float().cuda()
    b = torch.randn(16, 40, device="cuda")
    torch.cuda.set_sync_debug_mode("error")  # any host synchronization inside the solver raises
    try:
        res = H.conjugate_gradient(lambda V: V @ A, b, damping=0.1, iterations=60)
        H.lissa(lambda V: V @ A, b, damping=0.01, scale=15.0, depth=50)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    exact = torch.linalg.solve(A + 0.1 * torch.eye(40, device="cuda"), b.T).T
    torch.testing.assert_close(res.x_KP, exact, rtol=1e-3, atol=1e-4)
