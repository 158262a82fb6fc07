"""Exact Hessian-vector products for ``nn.Module`` losses, multi-RHS, and batched inverse-HVP solvers.

Legend: K = right-hand sides (vectors), P = parameters in the chosen subset (flattened), N = examples,
C = classes, D = features.

- :func:`module_loss` turns a module + loss into a function of a chosen parameter subset (the rest held fixed).
- :func:`hvp` / :func:`hvp_multi`: H v exactly, by forward-over-reverse (``jvp`` of ``grad``) or reverse-over-
  reverse (``vjp`` of ``grad``). ``hvp_multi`` computes H [v_1..v_k] in one pass that shares the linearization:
  fwd_rev vmaps the tangents through one jvp (the primal forward/backward is computed once, unbatched);
  rev_rev builds the gradient graph once and vmaps its VJP. Which is faster depends on the model
  (benchmarks/results/kernels_cpu.json, README "Kernels").
- :func:`linear_softmax_ce_hvp`: the exact Hessian (= Gauss-Newton: the logits are linear in the layer) of a
  mean softmax cross-entropy wrt a linear output layer, on K vectors: two matmuls and the fused logit-space
  product ``ops.softmax_ce_hvp``.
- :func:`conjugate_gradient` and :func:`lissa`: (H + damping I)^-1 b for K right-hand sides at once, with fixed
  iteration counts and device-side convergence masks, so no iteration waits on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

import torch
from scalefirst_kernels import ops
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

Params = dict[str, torch.Tensor]
Mode = Literal["fwd_rev", "rev_rev"]
MODES: tuple[str, ...] = ("fwd_rev", "rev_rev")


def module_loss(
    module: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    params: Sequence[str] | None = None,
) -> tuple[Callable[[Params], torch.Tensor], Params]:
    """(f, primals): ``f(p) = loss_fn(module(*inputs) with p)`` over the parameter subset ``params`` (names as
    in ``named_parameters``; default every parameter that requires grad). Other parameters and buffers are
    constants. ``loss_fn`` takes the module's output (e.g. ``lambda out: F.cross_entropy(out, y)``).
    """
    named = dict(module.named_parameters())
    names = list(params) if params is not None else [n for n, p in named.items() if p.requires_grad]
    unknown = [n for n in names if n not in named]
    if unknown:
        raise KeyError(f"unknown parameter(s) {unknown}; the module has {sorted(named)}")
    if not names:
        raise ValueError("no parameters chosen for the Hessian")
    fixed = {n: p.detach() for n, p in named.items() if n not in names}
    fixed.update(dict(module.named_buffers()))
    primals = {n: named[n].detach() for n in names}

    def f(p: Params) -> torch.Tensor:
        return loss_fn(functional_call(module, {**fixed, **p}, tuple(inputs)))

    return f, primals


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown HVP mode {mode!r}; choose {', '.join(MODES)}")


def hvp(f: Callable[[Params], torch.Tensor], primals: Params, tangents: Params, mode: Mode = "fwd_rev") -> Params:
    """H v for one vector ``v`` (a dict shaped like ``primals``), H the Hessian of scalar ``f`` at ``primals``."""
    _check_mode(mode)
    if mode == "fwd_rev":
        return jvp(grad(f), (primals,), (tangents,))[1]
    _, vjp_fn = vjp(grad(f), primals)
    return vjp_fn(tangents)[0]


def hvp_multi(
    f: Callable[[Params], torch.Tensor], primals: Params, tangents_K: Params, mode: Mode = "fwd_rev"
) -> Params:
    """H [v_1..v_K]: every tangent carries a leading K dimension; one shared linearization (see module doc)."""
    _check_mode(mode)
    if mode == "fwd_rev":
        return vmap(lambda t: jvp(grad(f), (primals,), (t,))[1])(tangents_K)
    _, vjp_fn = vjp(grad(f), primals)
    return vmap(lambda t: vjp_fn(t)[0])(tangents_K)


def flatten(tensors: Mapping[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
    """Concatenate a params-like dict into [*batch, P] (dict order)."""
    return torch.cat([t.reshape(*t.shape[:batch_dims], -1) for t in tensors.values()], dim=batch_dims)


def unflatten(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Params:
    """Inverse of :func:`flatten` for [*batch, P] against ``like`` (unbatched shapes)."""
    batch = flat.shape[:-1]
    out, start = {}, 0
    for name, t in like.items():
        n = t.numel()
        out[name] = flat[..., start : start + n].reshape(*batch, *t.shape)
        start += n
    if start != flat.shape[-1]:
        raise ValueError(f"flat vector has {flat.shape[-1]} entries, the parameters {start}")
    return out


def hvp_matvec(
    f: Callable[[Params], torch.Tensor], primals: Params, mode: Mode = "fwd_rev"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A [K, P] -> [K, P] Hessian product on flat vectors (what the solvers take). rev_rev builds the gradient
    graph at ``primals`` once and every call only replays its VJP; fwd_rev runs one jvp of the gradient per call,
    vmapped over the K tangents (``torch.func.linearize`` would cache it, but warns from inside torch.fx)."""
    _check_mode(mode)
    if mode == "fwd_rev":

        def lin_fn(t: Params) -> Params:
            return jvp(grad(f), (primals,), (t,))[1]

    else:
        _, vjp_fn = vjp(grad(f), primals)

        def lin_fn(t: Params) -> Params:
            return vjp_fn(t)[0]

    batched = vmap(lin_fn)

    def matvec(v_KP: torch.Tensor) -> torch.Tensor:
        return flatten(batched(unflatten(v_KP, primals)), batch_dims=1)

    return matvec


def linear_softmax_ce_hvp(
    x_ND: torch.Tensor,
    weight_CD: torch.Tensor,
    bias_C: torch.Tensor | None,
    vec_weight_KCD: torch.Tensor,
    vec_bias_KC: torch.Tensor | None = None,
    *,
    backend: ops.Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exact Hessian of mean_n CE(x_n W^T + b, y_n) wrt (W, b), times K vectors (V_W, V_b).

    The labels do not enter the Hessian. With z = x W^T + b and u_k = x V_W,k^T + V_b,k (the logit tangents),
    H v_k = (1/N) (J_n u_k,n) ⊗ [x_n, 1] summed over n, J_n = diag(p_n) - p_n p_n^T. Returns
    (H_W v [K, C, D], H_b v [K, C] or None without a bias).
    """
    N = x_ND.shape[0]
    logits_NC = x_ND @ weight_CD.T
    if bias_C is not None:
        logits_NC = logits_NC + bias_C
    u_KNC = torch.einsum("nd,kcd->knc", x_ND, vec_weight_KCD)
    if vec_bias_KC is not None:
        u_KNC = u_KNC + vec_bias_KC[:, None, :]
    r_KNC = ops.softmax_ce_hvp(logits_NC, u_KNC, backend=backend) / max(N, 1)
    hw_KCD = torch.einsum("knc,nd->kcd", r_KNC.to(x_ND.dtype), x_ND)
    return hw_KCD, (r_KNC.sum(1).to(x_ND.dtype) if bias_C is not None else None)


class SolveResult(NamedTuple):
    x_KP: torch.Tensor
    """The solutions, one row per right-hand side."""
    residual_K: torch.Tensor
    """||(H + damping I) x - b|| / ||b|| per row (CG: the recursive residual; LiSSA: computed at the end)."""
    iterations_K: torch.Tensor
    """Iterations each row was still active (CG stops a row at the tolerance; LiSSA always runs ``depth``)."""


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b_KP: torch.Tensor,
    *,
    damping: float = 0.0,
    iterations: int = 100,
    rtol: float = 1e-6,
) -> SolveResult:
    """Solve (H + damping I) x = b for K right-hand sides at once by conjugate gradients.

    ``matvec``: [K, P] -> H [K, P] (e.g. :func:`hvp_matvec`); H symmetric, H + damping I positive definite.
    Exactly ``iterations`` matvecs: a row whose residual fell below ``rtol * ||b||`` is frozen by a device-side
    mask (its step size becomes 0) rather than by a host-side test, so nothing synchronizes inside the loop.
    A direction of non-positive curvature (H + damping I not PD) also freezes the row.
    """
    if damping < 0 or iterations < 0:
        raise ValueError(f"damping and iterations must be >= 0, got {damping}, {iterations}")
    acc = torch.promote_types(b_KP.dtype, torch.float32)
    b = b_KP.to(acc)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs_K = (r * r).sum(1)
    b2_K = rs_K.clone()
    stop_K = (rtol**2) * b2_K
    its_K = torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)
    for _ in range(iterations):
        ap = matvec(p.to(b_KP.dtype)).to(acc) + damping * p
        pap_K = (p * ap).sum(1)
        active_K = (rs_K > stop_K) & (pap_K > 0)
        alpha_K = torch.where(active_K, rs_K / torch.where(active_K, pap_K, 1.0), 0.0)
        x = x + alpha_K[:, None] * p
        r = r - alpha_K[:, None] * ap
        rs_new_K = (r * r).sum(1)
        beta_K = torch.where(active_K, rs_new_K / torch.where(active_K, rs_K, 1.0), 0.0)
        p = torch.where(active_K[:, None], r + beta_K[:, None] * p, p)
        rs_K = torch.where(active_K, rs_new_K, rs_K)
        its_K = its_K + active_K.long()
    residual_K = rs_K.sqrt() / b2_K.sqrt().clamp_min(torch.finfo(acc).tiny)
    return SolveResult(x.to(b_KP.dtype), residual_K, its_K)


def lissa(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b_KP: torch.Tensor,
    *,
    damping: float = 0.01,
    scale: float = 25.0,
    depth: int = 100,
) -> SolveResult:
    """LiSSA / truncated Neumann series for K right-hand sides: h_0 = b, h_j = b + (1 - damping) h_{j-1} -
    H h_{j-1} / scale, result h_depth / scale (shared/methods/dao.md).

    The fixed point is (H + scale * damping I)^-1 b, so the effective damping is ``scale * damping`` (stated
    in the residual). It converges when ||H|| / scale + damping < 2 and H + scale*damping I is PD; the error
    shrinks like (1 - (lambda_min(H)/scale + damping))^depth. ``matvec`` may sample a new minibatch per call
    (stochastic LiSSA). A fixed ``depth``, no host synchronization.
    """
    if scale <= 0 or depth < 0:
        raise ValueError(f"scale must be > 0 and depth >= 0, got {scale}, {depth}")
    acc = torch.promote_types(b_KP.dtype, torch.float32)
    b = b_KP.to(acc)
    h = b.clone()
    for _ in range(depth):
        h = b + (1.0 - damping) * h - matvec(h.to(b_KP.dtype)).to(acc) / scale
    x = h / scale
    resid = matvec(x.to(b_KP.dtype)).to(acc) + scale * damping * x - b
    residual_K = resid.norm(dim=1) / b.norm(dim=1).clamp_min(torch.finfo(acc).tiny)
    its_K = torch.full((b.shape[0],), depth, dtype=torch.int64, device=b.device)
    return SolveResult(x.to(b_KP.dtype), residual_K, its_K)
