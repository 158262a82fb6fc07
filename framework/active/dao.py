"""DAO: Direct Acquisition Optimization (thesis ch. 2, Algorithm 1): expected-error reduction without retraining.

Legend: N = unlabeled pool, K = candidates scored in one batch (a chunk), P = parameters in the chosen subset,
n = labeled set size, n_C = LURE evaluation points, C = classes, E = embedding dim.

For each candidate x_i:
1. expected gradient g_i = sum_c p_c grad l(x_i, c; theta): the gradient of the cross-entropy against a detached
   soft label p (eq. 2.6), for K candidates at once (vmap of grad). Read literally, eq. 2.6 weights by the model's
   own prediction, p = f(x_i); for a softmax model that sum is exactly zero (sum_c p_c grad(-log p_c) =
   -grad sum_c p_c = 0: tested), so every candidate would get theta_i = theta and DAO would reduce to LURE noise.
   The default takes p from the surrogate pi, the thesis' own approximation of p(y|x) (eq. 2.2): g_i = J^T(f - pi),
   non-zero where the two models disagree. ``expected_gradient`` offers the literal reading (``model``) and the
   gradient at f's arg-max label (``pseudo_label``, as BADGE);
2. influence update theta_i = theta - H^-1 g_i / (n + 1) (eqs. 2.4-2.9), H the Hessian of the training loss on
   ``n_ihvp`` labeled points drawn at random, damped: (H + damping I). The K right-hand sides are solved together
   (scalefirst_kernels.hvp: batched CG or LiSSA over a multi-RHS HVP that shares one linearization). Reading of
   eq. 2.7: CG minimizes 1/2 t^T H t - v^T t, whose minimizer is H^-1 v; the thesis' t^T H t - v^T t would give
   H^-1 v / 2 (shared/methods/dao.md);
3. LURE estimate of the pool's expected loss under theta_i (eqs. 2.10-2.15): n_C points of U \\ {x_i} drawn
   sequentially with proposal q(m) ~ -sum_y pi(y|x_m) log f(y|x_m) (surrogate pi vs the current model), each loss
   the expected cross-entropy under pi (labels are unknown), weighted by LURE's v_m; perturbed models are
   evaluated with functional_call under vmap.
The score s_i is that estimate (lower = better); acquisition.select_batch then takes a Gumbel-perturbed top-k.

``params='head'`` moves only the last linear layer: its Hessian with the embedding fixed is the softmax-CE
output-layer Hessian, applied by the fused ``scalefirst_kernels.hvp.linear_softmax_ce_hvp`` (closed-form gradients,
no vmap over the network): much cheaper, and the same scores as the general path restricted to the head (tested).

Constants the thesis does not give (defaults, all in :class:`DAOConfig`): damping 1.0, CG 20 iterations (or
LiSSA scale 10, depth 100), the full parameter set, float64 scoring (so W ranks score exactly what one does: every
candidate's computation is independent of the chunk it is in, and its LURE draw is seeded by its index).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from scalefirst_kernels import hvp as H
from torch import nn
from torch.func import functional_call, grad, vmap

from framework.active.acquisition import Acquisition
from framework.active.lure import lure_estimate, sample_proposal


@dataclass(kw_only=True, frozen=True)
class DAOConfig:
    n_ihvp: int = 8
    """Labeled points the Hessian is estimated from (thesis: 8)."""
    n_c: int = 16
    """LURE evaluation points per candidate (thesis: 16)."""
    solver: Literal["cg", "lissa"] = "cg"
    damping: float = 1.0
    """(H + damping I). The 8-point Hessian has rank <= 8 (C - 1) of P ~ 6k parameters, so in most directions the
    step is g / (damping (n + 1)): 0.01 makes it 100x a unit gradient step and the scores explode (digits, 20
    labels: estimated losses up to 1.9e6 with 0.01, 1.8e4 with 0.1, 0.97-3.5 with 1.0, 0.94-1.11 with 10)."""
    cg_iterations: int = 20
    lissa_scale: float = 10.0
    """LiSSA's scale must exceed the largest eigenvalue of H + damping; the recursion's damping is damping/scale."""
    lissa_depth: int = 100
    hvp_mode: Literal["fwd_rev", "rev_rev"] = "rev_rev"
    """Reverse-over-reverse: the faster mode on CPU for these models (benchmarks/results/kernels_cpu.json)."""
    params: Literal["all", "head"] = "all"
    """Parameters the influence update moves: all of f's, or only its last linear layer (fused path)."""
    expected_gradient: Literal["surrogate", "model", "pseudo_label"] = "surrogate"
    """Soft label of eq. 2.6: the surrogate's pi(y|x) (default), f's own prediction (literal; gives g = 0, see the
    module doc), or f's arg-max one-hot."""
    update: Literal["influence", "sgd_step"] = "influence"
    """Ablation (thesis fig. 2.5a): one SGD step theta - sgd_lr * g_i / (n + 1) instead of the influence update."""
    sgd_lr: float = 1.0
    proposal: Literal["lure", "uniform"] = "lure"
    """Ablation (fig. 2.5b): uniform evaluation points (plain mean) instead of LURE's active proposal."""
    acquisition: Acquisition = "softrank"
    beta: float = 1.0
    """Gumbel(0, 1/beta) noise of the batch acquisition."""
    chunk: int = 128
    """Candidates per batched solve (memory: chunk x P float64 per right-hand-side block)."""

    def __post_init__(self) -> None:
        if self.n_ihvp < 1 or self.n_c < 1 or self.chunk < 1:
            raise ValueError("n_ihvp, n_c and chunk must be >= 1")
        if self.damping < 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")


def _param_names(model: nn.Module, which: str) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    if which == "all":
        return names
    head = [n for n in names if n.startswith("head.") or n.startswith("head_mm.")]
    if not head:
        raise ValueError("params='head' needs a last layer named head (or head_mm)")
    return head


def _labels(logp_NC: torch.Tensor, pi_NC: torch.Tensor, which: str) -> torch.Tensor:
    if which == "surrogate":
        return pi_NC
    if which == "model":
        return logp_NC.exp()
    return F.one_hot(logp_NC.argmax(1), logp_NC.shape[1]).to(logp_NC.dtype)


def _proposal(logp_NC: torch.Tensor, pi_NC: torch.Tensor, cfg: DAOConfig) -> torch.Tensor:
    """q ~ cross-entropy of the surrogate against the current model (high where they disagree); or uniform."""
    w_N = -(pi_NC * logp_NC).sum(1) if cfg.proposal == "lure" else torch.ones_like(logp_NC[:, 0])
    return w_N.clamp_min(1e-12)


def influence_step(
    matvec: Callable[[torch.Tensor], torch.Tensor], g_KP: torch.Tensor, n: int, cfg: DAOConfig
) -> torch.Tensor:
    """theta_i - theta for K candidates (eq. 2.9): -(H + damping I)^-1 g / (n + 1), or -sgd_lr g / (n + 1) for the
    ablation; ``matvec`` applies H to [K, P]."""
    if cfg.update == "sgd_step":
        step = cfg.sgd_lr * g_KP
    elif cfg.solver == "cg":
        # rtol=0: every row runs all iterations, so no row stops at a different step when its chunk changes (a
        # tolerance test near the threshold would make scores depend on the batch composition by ~1e-5).
        step = H.conjugate_gradient(matvec, g_KP, damping=cfg.damping, iterations=cfg.cg_iterations, rtol=0.0).x_KP
    else:
        step = H.lissa(matvec, g_KP, damping=cfg.damping / cfg.lissa_scale, scale=cfg.lissa_scale,
                       depth=cfg.lissa_depth).x_KP  # fmt: skip
    return -step / (n + 1)


def _lure_draws(proposal_N: torch.Tensor, idx_K: torch.Tensor, n_c: int, seed: int):
    """n_C points of U minus the candidate, per candidate, each draw seeded by the candidate's index (so it is the
    same on any rank and in any chunk). Returns (points [K, n_C], step probabilities [K, n_C])."""
    N = proposal_N.numel()
    w_KN = proposal_N.expand(idx_K.numel(), N).clone()
    w_KN[torch.arange(idx_K.numel()), idx_K] = 0.0
    draws = [sample_proposal(w_KN[j : j + 1], n_c, torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
             for j, i in enumerate(idx_K)]  # fmt: skip
    return torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws])


def _estimate(loss_Kn: torch.Tensor, q_Kn: torch.Tensor, N: int, cfg: DAOConfig) -> torch.Tensor:
    return lure_estimate(loss_Kn, q_Kn, N - 1) if cfg.proposal == "lure" else loss_Kn.mean(1)


def _head_scores(f, x_h, y_h, xs_U, pi, cfg: DAOConfig, seed: int, cand: torch.Tensor, n: int) -> torch.Tensor:
    """params='head' on a model with ``embed`` and a linear ``head`` (see the module doc)."""
    W, b = f.head.weight.detach(), f.head.bias.detach()
    C, E = W.shape
    with torch.no_grad():
        z_h = f.embed(*x_h)
        z_U = torch.cat([f.embed(*(x[i : i + 4096] for x in xs_U)) for i in range(0, xs_U[0].shape[0], 4096)])
    logit_U = z_U @ W.T + b
    logp_U = torch.log_softmax(logit_U, dim=1)
    label_U = _labels(logp_U, pi, cfg.expected_gradient)
    proposal_N = _proposal(logp_U, pi, cfg)

    def matvec(v_KP: torch.Tensor) -> torch.Tensor:
        hw, hb = H.linear_softmax_ce_hvp(z_h, W, b, v_KP[:, : C * E].reshape(-1, C, E), v_KP[:, C * E :])
        return torch.cat([hw.flatten(1), hb], dim=1)

    N = z_U.shape[0]
    out = torch.empty(cand.numel(), dtype=torch.float64)
    for start in range(0, cand.numel(), cfg.chunk):
        idx_K = cand[start : start + cfg.chunk]
        r_KC = logp_U[idx_K].exp() - label_U[idx_K]  # d CE(z W^T + b, label) / d logits
        g_KP = torch.cat([(r_KC[:, :, None] * z_U[idx_K][:, None, :]).flatten(1), r_KC], dim=1)
        step_KP = -influence_step(matvec, g_KP, n, cfg)
        dW_KCE, db_KC = step_KP[:, : C * E].reshape(-1, C, E), step_KP[:, C * E :]
        m_Kn, q_Kn = _lure_draws(proposal_N, idx_K, cfg.n_c, seed)
        logits_KnC = logit_U[m_Kn] - torch.einsum("kne,kce->knc", z_U[m_Kn], dW_KCE) - db_KC[:, None, :]
        loss_Kn = -(pi[m_Kn] * torch.log_softmax(logits_KnC, dim=-1)).sum(-1)
        out[start : start + idx_K.numel()] = _estimate(loss_Kn, q_Kn, N, cfg)
    return out


def _hessian_sample(x_L: tuple[torch.Tensor, ...], y_L: torch.Tensor, cfg: DAOConfig, seed: int):
    """The n_ihvp labeled points H is estimated from (float64 inputs)."""
    h_idx = torch.randperm(y_L.numel(), generator=torch.Generator().manual_seed(seed))[: cfg.n_ihvp]
    return tuple(x[h_idx].double() for x in x_L), y_L[h_idx]


def _functional(f: nn.Module, names: list[str], x_h: tuple[torch.Tensor, ...], y_h: torch.Tensor, cfg: DAOConfig):
    """(theta: the moved parameters, logits(params, xs) with the others fixed, the Hessian matvec on (x_h, y_h))."""
    f_H, theta = H.module_loss(f, lambda out: F.cross_entropy(out, y_h), x_h, params=names)
    fixed = {k: v.detach() for k, v in f.named_parameters() if k not in theta}

    def logits(p: dict[str, torch.Tensor], xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return functional_call(f, {**fixed, **p}, xs)

    return theta, logits, H.hvp_matvec(f_H, theta, cfg.hvp_mode)


def _soft_ce_grad(logits: Callable):
    """Per-example gradient of the cross-entropy against a soft target, vmapped: (theta, xs [K, ...], t [K, C])."""

    def soft_ce(p, x, target):
        return -(target * torch.log_softmax(logits(p, tuple(t[None] for t in x)), dim=1)[0]).sum()

    return vmap(grad(soft_ce), in_dims=(None, 0, 0))


def updated_parameters(
    model: nn.Module,
    x_L: tuple[torch.Tensor, ...],
    y_L: torch.Tensor,
    x_K: tuple[torch.Tensor, ...],
    target_KC: torch.Tensor,
    cfg: DAOConfig,
    seed: int,
) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    """DAO's parameter update for K points whose (soft) labels are given: theta - (H + damping I)^-1 grad
    l(x_k, target_k) / (n + 1), or the one-SGD-step ablation (``cfg.update``), on ``cfg.params``. Returns the
    float64 eval copy of ``model`` and K full parameter dicts for ``functional_call`` (the ablation of thesis
    fig. 2.5a: a labeled point added, without retraining)."""
    f = copy.deepcopy(model).double().eval()
    n = y_L.numel()
    theta, logits, matvec = _functional(f, _param_names(f, cfg.params), *_hessian_sample(x_L, y_L, cfg, seed), cfg)
    g_KP = H.flatten(_soft_ce_grad(logits)(theta, tuple(x.double() for x in x_K), target_KC.double()), batch_dims=1)
    step = H.unflatten(influence_step(matvec, g_KP, n, cfg), theta)
    base = {k: v.detach() for k, v in f.named_parameters()}
    return f, [{**base, **{k: theta[k].detach() + step[k][i] for k in theta}} for i in range(target_KC.shape[0])]


def dao_scores(
    model: nn.Module,
    x_L: tuple[torch.Tensor, ...],
    y_L: torch.Tensor,
    x_U: tuple[torch.Tensor, ...],
    pi_U: torch.Tensor,
    cfg: DAOConfig,
    seed: int,
    candidates: torch.Tensor | None = None,
    *,
    fused_head: bool = True,
) -> torch.Tensor:
    """Estimated pool loss after adding each candidate (float64, lower is better).

    Args:
        model: the trained task model f (not modified; scored in a float64 copy, eval mode).
        x_L, y_L: the labeled set (the Hessian sample is drawn from it).
        x_U: the unlabeled pool; ``pi_U`` [N, C]: the surrogate's predicted probabilities on it.
        candidates: indices into the pool to score (default all): how ranks split the work.
        fused_head: with ``params='head'``, take the fused output-layer path (False: the general torch.func path,
            for the equivalence test).
    """
    f = copy.deepcopy(model).double().eval()
    xs_U = tuple(x.double() for x in x_U)
    pi = pi_U.double()
    N = xs_U[0].shape[0]
    cand = torch.arange(N) if candidates is None else candidates.long()
    n = y_L.numel()
    names = _param_names(f, cfg.params)
    x_h, y_h = _hessian_sample(x_L, y_L, cfg, seed)
    if fused_head and cfg.params == "head" and isinstance(getattr(f, "head", None), nn.Linear) and hasattr(f, "embed"):
        return _head_scores(f, x_h, y_h, xs_U, pi, cfg, seed, cand, n)
    theta, logits, matvec = _functional(f, names, x_h, y_h, cfg)
    with torch.no_grad():
        logp_U = torch.log_softmax(logits(theta, xs_U), dim=1)
    label_U = _labels(logp_U, pi, cfg.expected_gradient)
    proposal_N = _proposal(logp_U, pi, cfg)

    expected_grad = _soft_ce_grad(logits)
    out = torch.empty(cand.numel(), dtype=torch.float64)
    for start in range(0, cand.numel(), cfg.chunk):
        idx_K = cand[start : start + cfg.chunk]
        g_KP = H.flatten(expected_grad(theta, tuple(x[idx_K] for x in xs_U), label_U[idx_K]), batch_dims=1)
        step = H.unflatten(influence_step(matvec, g_KP, n, cfg), theta)
        theta_K = {k: v[None] + step[k] for k, v in theta.items()}
        m_Kn, q_Kn = _lure_draws(proposal_N, idx_K, cfg.n_c, seed)
        x_eval = tuple(x[m_Kn] for x in xs_U)  # [K, n_C, ...]
        logp_KnC = torch.log_softmax(vmap(logits)(theta_K, x_eval), dim=-1)
        loss_Kn = -(pi[m_Kn] * logp_KnC).sum(-1)
        out[start : start + idx_K.numel()] = _estimate(loss_Kn, q_Kn, N, cfg)
    return out
