"""MMCSAL: multimodal cold-start active learning (thesis ch. 4): pick the first B labels before any label exists.

Legend: N = pool, B = budget, M = 2 modalities, d = representation dim, C = prototypes per modality.

Stage 1 (self-supervised): per-modality encoders to unit-norm r^m; L = 1/2 L_cross + 1/2 L_uni with L_cross the
symmetric InfoNCE between the two modalities of the same sample (tau = 0.07) and L_uni a prototype loss after
``warmup`` epochs: k-means (scikit-learn) on each modality's r gives C prototypes p_c with concentrations
phi_c = mean_{r in c} |r - p_c| / log(|c| + 10), rescaled to mean tau; L_uni = CE of r against its cluster over
logits r.p_c / phi_c.
Stage 2: learnable unit-norm selectors theta^m_j (j < B, per modality) minimize D - lambda_div R + s lambda_align A:
D the distribution gap (mean over samples of 1 - softmax_j r_i.theta_j at temperature tau: every sample near some
selector), R the
diversity (mean over selector pairs of 1 - theta_j.theta_k), A the cross-modal alignment (mean_j 1 -
theta^1_j.theta^2_j); the thesis leaves the sign of A ambiguous, so ``align_sign`` s is configurable (+1: pull the
two modalities' selectors together). Each selector then takes its nearest not-yet-taken sample (summed over both
modalities' similarities).
``cold_start`` runs both stages on a two-modality pool (the loop's ``loop.initial_strategy: mmcsal``).
Diagnostics: Delta_gap = |mean r^1 - mean r^2|, S_uni = log mean_{i != j} exp(-2 |r_i - r_j|^2) per modality,
S_cross = mean_i r^1_i . r^2_i.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn


@dataclass(kw_only=True, frozen=True)
class MMCSALConfig:
    dim: int = 32
    tau: float = 0.07
    epochs: int = 30
    warmup: int = 10
    prototypes: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    selector_epochs: int = 300
    selector_lr: float = 1e-3
    lambda_div: float = 1.0
    lambda_align: float = 1.0
    align_sign: float = 1.0
    selector: Literal["learned", "kmeans"] = "learned"
    """Stage 2: the learned selectors (the thesis), or the ablation: the sample nearest each of B k-means
    centroids of the concatenated [r^1, r^2] (stage 1 only)."""


class TwoTower(nn.Module):
    """Encoder per modality (any modules mapping to features) + linear projection to unit-norm d-dim r^m."""

    def __init__(self, enc1: nn.Module, enc2: nn.Module, d1: int, d2: int, dim: int) -> None:
        super().__init__()
        self.enc1, self.enc2 = enc1, enc2
        self.proj1, self.proj2 = nn.Linear(d1, dim), nn.Linear(d2, dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.proj1(self.enc1(x1)), dim=1), F.normalize(self.proj2(self.enc2(x2)), dim=1)


def cross_modal_infonce(r1: torch.Tensor, r2: torch.Tensor, tau: float) -> torch.Tensor:
    logits = r1 @ r2.T / tau
    target = torch.arange(r1.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def prototypes(r: np.ndarray, C: int, tau: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(assignments [N], prototypes [C, d] unit-norm, concentrations phi [C] rescaled to mean tau)."""
    km = KMeans(n_clusters=C, n_init=3, random_state=seed).fit(r)
    assign = torch.from_numpy(km.labels_).long()
    protos = F.normalize(torch.from_numpy(km.cluster_centers_).float(), dim=1)
    rt = torch.from_numpy(r).float()
    phi = torch.empty(C)
    for c in range(C):
        members = rt[assign == c]
        n_c = members.shape[0]
        phi[c] = (members - protos[c]).norm(dim=1).mean() / math.log(n_c + 10) if n_c else 1.0
    phi = phi * (tau / phi.mean())
    return assign, protos, phi


def prototype_loss(r: torch.Tensor, assign: torch.Tensor, protos: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(r @ protos.T / phi, assign)


@torch.no_grad()
def represent(model: TwoTower, x1: torch.Tensor, x2: torch.Tensor, batch: int = 2048):
    model.eval()
    out = [model(x1[i : i + batch], x2[i : i + batch]) for i in range(0, x1.shape[0], batch)]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def train_stage1(model: TwoTower, x1: torch.Tensor, x2: torch.Tensor, cfg: MMCSALConfig, seed: int) -> list[float]:
    """Self-supervised training; returns the mean loss per epoch."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n = x1.shape[0]
    history = []
    for epoch in range(cfg.epochs):
        protos = None
        if epoch >= cfg.warmup:
            r1, r2 = represent(model, x1, x2)
            protos = [prototypes(r.numpy(), cfg.prototypes, cfg.tau, seed + epoch) for r in (r1, r2)]
        model.train()
        losses = []
        for idx in torch.randperm(n, generator=g).split(cfg.batch_size):
            r1, r2 = model(x1[idx], x2[idx])
            loss = cross_modal_infonce(r1, r2, cfg.tau)
            if protos is not None:
                uni = sum(prototype_loss(r, a[idx], p, phi) for r, (a, p, phi) in zip((r1, r2), protos, strict=True))
                loss = 0.5 * loss + 0.5 * uni / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
    model.eval()
    return history


def selector_objective(
    theta1: torch.Tensor, theta2: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, cfg: MMCSALConfig
) -> dict[str, torch.Tensor]:
    t1, t2 = F.normalize(theta1, dim=1), F.normalize(theta2, dim=1)
    # Nearest selector as a soft maximum at temperature tau: every sample pulls on all its near selectors, so one
    # selector caught between a big and a small cluster does not starve the small one of gradient.
    gap = sum((1 - cfg.tau * torch.logsumexp(r @ t.T / cfg.tau, dim=1)).mean() for r, t in ((r1, t1), (r2, t2))) / 2
    B = t1.shape[0]
    off = ~torch.eye(B, dtype=torch.bool)
    div = sum((1 - (t @ t.T))[off].mean() for t in (t1, t2)) / 2 if B > 1 else torch.zeros(())
    align = (1 - (t1 * t2).sum(1)).mean()
    loss = gap - cfg.lambda_div * div + cfg.align_sign * cfg.lambda_align * align
    return {"loss": loss, "gap": gap, "diversity": div, "alignment": align}


def select_cold_start(r1: torch.Tensor, r2: torch.Tensor, B: int, cfg: MMCSALConfig, seed: int) -> torch.Tensor:
    """Stage 2: B distinct pool indices."""
    g = torch.Generator().manual_seed(seed)
    init = torch.randperm(r1.shape[0], generator=g)[:B]
    theta1 = r1[init].clone().requires_grad_()
    theta2 = r2[init].clone().requires_grad_()
    opt = torch.optim.Adam([theta1, theta2], lr=cfg.selector_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.selector_epochs)
    for _ in range(cfg.selector_epochs):
        opt.zero_grad(set_to_none=True)
        selector_objective(theta1, theta2, r1, r2, cfg)["loss"].backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        sim = r1 @ F.normalize(theta1, dim=1).T + r2 @ F.normalize(theta2, dim=1).T  # [N, B]
        picked: list[int] = []
        for j in range(B):
            col = sim[:, j].clone()
            col[picked] = -float("inf")
            picked.append(int(col.argmax()))
    return torch.tensor(picked, dtype=torch.int64)


def kmeans_centers(r1: torch.Tensor, r2: torch.Tensor, B: int, seed: int) -> torch.Tensor:
    """B distinct indices: per k-means cluster of [r^1, r^2], the sample nearest its centroid."""
    r = torch.cat([r1, r2], dim=1)
    km = KMeans(n_clusters=B, n_init=3, random_state=seed).fit(r.numpy())
    dist = torch.cdist(torch.from_numpy(km.cluster_centers_).to(r.dtype), r)  # [B, N]
    picked: list[int] = []
    for j in range(B):
        row = dist[j].clone()
        row[picked] = float("inf")
        picked.append(int(row.argmin()))
    return torch.tensor(picked, dtype=torch.int64)


def diagnostics(r1: torch.Tensor, r2: torch.Tensor) -> dict[str, float]:
    def uniformity(r: torch.Tensor) -> float:
        d2 = torch.cdist(r, r) ** 2
        off = ~torch.eye(r.shape[0], dtype=torch.bool)
        return float(torch.log(torch.exp(-2 * d2[off]).mean()))

    return {
        "delta_gap": float((r1.mean(0) - r2.mean(0)).norm()),
        "s_uni_m1": uniformity(r1),
        "s_uni_m2": uniformity(r2),
        "s_cross": float((r1 * r2).sum(1).mean()),
    }


def cold_start(
    x1: torch.Tensor, x2: torch.Tensor, B: int, cfg: MMCSALConfig, seed: int, encoders: tuple[nn.Module, nn.Module]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Both stages on an unlabeled two-modality pool: B distinct indices and a record (stage-1 losses per epoch,
    the diagnostics of the learned representations, seconds). ``encoders`` map each modality to features;
    deterministic given ``seed``."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    with torch.no_grad():
        d1, d2 = (enc(x[:2]).shape[1] for enc, x in zip(encoders, (x1, x2), strict=True))
    model = TwoTower(*encoders, d1, d2, cfg.dim)
    history = train_stage1(model, x1, x2, cfg, seed)
    r1, r2 = represent(model, x1, x2)
    picked = select_cold_start(r1, r2, B, cfg, seed) if cfg.selector == "learned" else kmeans_centers(r1, r2, B, seed)
    info = {"stage1_loss": history, "diagnostics": diagnostics(r1, r2), "seconds": time.perf_counter() - t0}
    return picked, info
