"""DAO's pieces: the influence update against retraining, the degenerate literal reading of eq. 2.6, the fused
output-layer path against the general one, Core-Set's approximation bound."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scalefirst_kernels import hvp as H
from torch import nn

from framework.active.dao import DAOConfig, dao_scores, influence_step, updated_parameters
from framework.active.data import digits_pool
from framework.active.models import build_model
from framework.active.strategies import k_center_greedy
from framework.active.train import FitConfig, fit, predict_probs

LAM = 0.05


def _fit_logreg(X: torch.Tensor, y: torch.Tensor) -> nn.Linear:
    """argmin of mean_i [CE_i + LAM/2 |theta|^2] to high precision (float64 L-BFGS)."""
    model = nn.Linear(X.shape[1], 3).double()
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(X), y) + LAM / 2 * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model


def _reg(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return LAM / 2 * sum((v**2).sum() for v in p.values())


def _influence_errors(X: torch.Tensor, y: torch.Tensor, z_x: torch.Tensor, z_y: torch.Tensor) -> tuple[float, float]:
    """(|influence update - retrained|, |theta_hat - retrained|) for adding z to (X, y)."""
    n = y.numel()
    model = _fit_logreg(X, y)
    f, theta = H.module_loss(model, lambda out: F.cross_entropy(out, y), [X])
    fz, _ = H.module_loss(model, lambda out: F.cross_entropy(out, z_y), [z_x])
    g_z = H.flatten(torch.func.grad(lambda p: fz(p) + _reg(p))(theta))[None]
    matvec = H.hvp_matvec(lambda p: f(p) + _reg(p), theta)
    approx = H.flatten(theta) + influence_step(matvec, g_z, n, DAOConfig(damping=0.0, cg_iterations=60))[0]
    retrained = _fit_logreg(torch.cat([X, z_x]), torch.cat([y, z_y]))
    exact = torch.cat([p.detach().reshape(-1) for p in retrained.parameters()])
    return float((approx - exact).norm()), float((H.flatten(theta) - exact).norm())


def test_influence_update_matches_retraining_to_first_order() -> None:
    """L2-regularized (strongly convex) softmax regression: theta_hat - H^-1 g_z / (n + 1) (influence_step, CG on
    the exact HVP) approaches the optimum retrained with z added with error O(1/n^2), while doing nothing (theta_hat)
    is O(1/n) off. Fitted log-log slopes over n = 40..640."""
    g = torch.Generator().manual_seed(0)
    ns = [40, 80, 160, 320, 640]
    X_all = torch.randn(641, 4, generator=g, dtype=torch.float64)
    y_all = (X_all[:, 0] + 0.5 * torch.randn(641, generator=g, dtype=torch.float64) > 0).long() + (
        X_all[:, 1] > 1
    ).long()
    z_x, z_y = torch.tensor([[2.0, -1.5, 1.0, 0.5]], dtype=torch.float64), torch.tensor([2])
    errs, base = zip(*(_influence_errors(X_all[:n], y_all[:n], z_x, z_y) for n in ns), strict=True)
    slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
    base_slope = np.polyfit(np.log(ns), np.log(base), 1)[0]
    assert -2.6 < slope < -1.6, (slope, errs)
    assert -1.3 < base_slope < -0.7, (base_slope, base)
    # The influence update's error shrinks relative to doing nothing: 2x better at n = 40, 60x at n = 640.
    ratios = [e / b for e, b in zip(errs, base, strict=True)]
    assert all(r1 > r2 for r1, r2 in itertools.pairwise(ratios)) and ratios[-1] < 0.05, ratios


def test_updated_parameters_is_the_damped_newton_step_by_hand() -> None:
    """updated_parameters (the fig. 2.5a ablation's update for labeled points) against an explicit Hessian: theta -
    (H + damping I)^-1 grad l(z_k, y_k) / (n + 1) with H the mean CE Hessian on all n points (n_ihvp = n), for two
    points at once; and the SGD-step variant theta - lr grad / (n + 1)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    model = _fit_logreg(X, y)
    z_x, z_y = torch.randn(2, 4, generator=g, dtype=torch.float64), torch.tensor([2, 0])
    W, b = model.weight.detach(), model.bias.detach()
    theta = torch.cat([W.flatten(), b])

    def ce(t: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(xs @ t[:12].reshape(3, 4).T + t[12:], ys)

    hess = torch.autograd.functional.hessian(lambda t: ce(t, X, y), theta)
    cfg = DAOConfig(n_ihvp=30, damping=0.3, cg_iterations=40)
    f, params = updated_parameters(model, (X,), y, (z_x,), F.one_hot(z_y, 3), cfg, seed=0)
    sgd = updated_parameters(model, (X,), y, (z_x,), F.one_hot(z_y, 3), DAOConfig(update="sgd_step", sgd_lr=2.0), 0)[1]
    for k in range(2):
        grad_z = torch.func.grad(ce)(theta, z_x[k : k + 1], z_y[k : k + 1])
        want = theta - torch.linalg.solve(hess + 0.3 * torch.eye(15, dtype=torch.float64), grad_z) / 31
        got = torch.cat([params[k]["weight"].flatten(), params[k]["bias"]])
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
        got_sgd = torch.cat([sgd[k]["weight"].flatten(), sgd[k]["bias"]])
        torch.testing.assert_close(got_sgd, theta - 2.0 * grad_z / 31, rtol=1e-12, atol=1e-12)
    out = torch.func.functional_call(f, params[0], (X,))
    torch.testing.assert_close(out, X @ params[0]["weight"].T + params[0]["bias"])


@pytest.fixture(scope="module")
def trained():
    pool = digits_pool()
    lab = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:20]
    unl = torch.tensor([i for i in range(len(pool)) if i not in set(lab.tolist())])[:200]
    shape = tuple(tuple(x.shape[1:]) for x in pool.x)
    x_L, y_L = tuple(x[lab] for x in pool.x), pool.y[lab]
    torch.manual_seed(0)
    f = fit(build_model("cnn", shape, 10), x_L, y_L, FitConfig(steps=100), seed=0)
    torch.manual_seed(1)
    pi = fit(build_model("mlp", shape, 10), x_L, y_L, FitConfig(steps=100), seed=1)
    x_U = tuple(x[unl] for x in pool.x)
    return f, x_L, y_L, x_U, predict_probs(pi, x_U)


def test_literal_eq_2_6_gives_zero_gradient_so_no_update(trained) -> None:
    """Weighting by the model's own prediction: sum_c p_c grad(-log p_c) = 0, so the scores equal those of an
    unmoved model (sgd_step with lr 0); the surrogate reading moves the model and changes them."""
    args = (*trained,)
    cand = torch.arange(40)
    literal = dao_scores(*args, DAOConfig(expected_gradient="model"), seed=3, candidates=cand)
    unmoved = dao_scores(*args, DAOConfig(update="sgd_step", sgd_lr=0.0), seed=3, candidates=cand)
    torch.testing.assert_close(literal, unmoved, rtol=1e-9, atol=1e-9)
    surrogate = dao_scores(*args, DAOConfig(), seed=3, candidates=cand)
    assert (surrogate - unmoved).abs().max() > 1e-3


@pytest.mark.parametrize("solver", ["cg", "lissa"])
def test_fused_head_path_equals_general_path(trained, solver: str) -> None:
    cfg = DAOConfig(params="head", solver=solver, lissa_scale=20.0, lissa_depth=60)
    cand = torch.arange(0, 200, 5)
    fused = dao_scores(*trained, cfg, seed=1, candidates=cand)
    general = dao_scores(*trained, cfg, seed=1, candidates=cand, fused_head=False)
    torch.testing.assert_close(fused, general, rtol=1e-6, atol=1e-6)
    assert fused.std() > 1e-3  # the candidates really are told apart


def test_scores_per_chunk_and_across_chunkings(trained) -> None:
    """Scoring the chunks separately (what ranks do) gives bit-identical scores; a different chunking agrees only
    to ~1e-4 relative (CG amplifies last-bit HVP differences between batch sizes), which is why ranks split by
    whole chunks; the SGD-step ablation, with no solve, is chunking-invariant."""
    cand = torch.arange(30)
    whole = dao_scores(*trained, DAOConfig(chunk=10), seed=2, candidates=cand)
    parts = torch.cat([dao_scores(*trained, DAOConfig(chunk=10), seed=2, candidates=cand[i : i + 10])
                       for i in (0, 10, 20)])  # fmt: skip
    assert torch.equal(whole, parts)
    other = dao_scores(*trained, DAOConfig(chunk=7), seed=2, candidates=cand)
    torch.testing.assert_close(other, whole, rtol=1e-3, atol=0)
    sgd = [dao_scores(*trained, DAOConfig(chunk=c, update="sgd_step"), seed=2, candidates=cand) for c in (7, 30)]
    torch.testing.assert_close(sgd[0], sgd[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", range(5))
def test_coreset_radius_within_twice_optimal(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(10, 2, generator=g, dtype=torch.float64)
    k = 3
    picked = k_center_greedy(pts, pts[:0], k)
    assert picked.unique().numel() == k

    def radius(idx) -> float:
        return float(torch.cdist(pts, pts[list(idx)]).min(1).values.max())

    optimal = min(radius(c) for c in itertools.combinations(range(10), k))
    assert radius(picked.tolist()) <= 2 * optimal + 1e-12
    assert math.isfinite(optimal) and optimal > 0
