"""CLIP InfoNCE and RankCLIP's Plackett-Luce ranking-consistency losses (thesis chapter 4, eqs. 4.2-4.6).

Legend: N = batch (global, after gathering), D = embedding dim. Inputs are L2-normalized embeddings.

Reading of eq. 4.6 (stated because the thesis writes L_PL = -log prod_k mu_k * pi(y_k | y_<k)): taken literally,
``-sum_k log mu_k`` is a constant and the decay would not change any gradient, so we implement the weighted
ListMLE ``L_PL = -sum_k mu_k * log pi(y_k | y_<k)`` with ``mu_k = 1 / log(k + 1)`` (k = 1 is the top rank), averaged
over the N rows of the ego matrix. ``pi(d | y_<k) = exp(m(d)) / sum_{d' not yet placed} exp(m(d'))`` where ``m`` is
the ego row and ``y`` the items sorted by the reference row, descending (stable sort: ties keep index order, or
``tie_break="random"`` shuffles them). The reference only orders items, so no gradient flows through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from scalefirst_kernels import ops

Decay = Literal["log", "none"]
TieBreak = Literal["stable", "random"]


def clip_loss(
    img_ND: torch.Tensor, txt_ND: torch.Tensor, logit_scale: torch.Tensor | float, rows: slice | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE (eq. 4.2): mean of image→text and text→image cross-entropies, targets on the diagonal.

    ``rows`` (local-loss mode): only these rows (e.g. this rank's samples) against all N columns; the mean over
    ranks of the per-rank results is the full loss, so gradients averaged over ranks are the same.
    """
    rows = rows or slice(0, img_ND.shape[0])
    logits_img = logit_scale * img_ND[rows] @ txt_ND.T
    logits_txt = logit_scale * txt_ND[rows] @ img_ND.T
    targets = torch.arange(rows.start, rows.stop, device=img_ND.device)
    return 0.5 * (F.cross_entropy(logits_img, targets) + F.cross_entropy(logits_txt, targets))


def rank_weights(
    n: int, decay: Decay, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """mu_k for k = 1..n: 1/log(k+1) (``log``) or 1 (``none``, plain ListMLE)."""
    k = torch.arange(1, n + 1, device=device, dtype=dtype)
    return 1.0 / torch.log(k + 1.0) if decay == "log" else torch.ones_like(k)


def plackett_luce_loss(
    ego_NM: torch.Tensor,
    ref_NM: torch.Tensor,
    *,
    decay: Decay = "log",
    tie_break: TieBreak = "stable",
    generator: torch.Generator | None = None,
    backend: ops.Backend = "auto",
) -> torch.Tensor:
    """Position-weighted ListMLE of each ego row against the order given by the same row of ``ref``.

    Returns the mean over rows of ``-sum_k mu_k * log pi(y_k | y_<k)`` (see the module docstring). The ordering
    (a sort of ``ref``, with the tie-break) is done here; the gather, reverse log-cumsum-exp and weighting are
    ``scalefirst_kernels.ops.plackett_luce_loss`` (``backend``: reference, triton or auto).
    """
    if ego_NM.shape != ref_NM.shape or ego_NM.dim() != 2:
        raise ValueError(f"ego and ref must be equal 2-D shapes, got {tuple(ego_NM.shape)} and {tuple(ref_NM.shape)}")
    n, m = ego_NM.shape
    if n == 0 or m == 0:
        return ego_NM.sum() * 0.0
    ref = ref_NM.detach()
    if tie_break == "random":
        # Shuffle columns first: the stable sort then breaks ties in a random (but seeded) order.
        perm_NM = torch.argsort(torch.rand(n, m, generator=generator, device=ref.device), dim=1)
        order_NM = perm_NM.gather(1, torch.argsort(ref.gather(1, perm_NM), dim=1, descending=True, stable=True))
    elif tie_break == "stable":
        order_NM = torch.argsort(ref, dim=1, descending=True, stable=True)
    else:
        raise ValueError(f"tie_break must be 'stable' or 'random', got {tie_break!r}")
    # Both backends do the math in fp32 at least (a reverse logcumsumexp over half-precision scores loses the top
    # ranks); the reference keeps float64 as is.
    mu_M = rank_weights(m, decay, ego_NM.device)
    return ops.plackett_luce_loss(ego_NM, order_NM, mu_M, backend=backend).mean()


@dataclass(frozen=True, slots=True)
class RankCLIPLossConfig:
    lambda_in: float = 1.0 / 16
    """Weight of the in-modal term (0 gives RankCLIP_C)."""
    lambda_cross: float = 1.0 / 16
    """Weight of the cross-modal term (0 gives RankCLIP_I)."""
    decay: Decay = "log"
    """Rank weights mu_k: 1/log(k+1) (thesis) or none (plain ListMLE)."""
    symmetric_in_modal: bool = False
    """Also rank v v^T by t t^T and average both directions (the thesis states one direction)."""
    scale_by_temperature: bool = False
    """Ego scores are logit_scale * cosine (the authors' code) instead of the raw cosine (thesis text)."""
    tie_break: TieBreak = "stable"
    """Order of tied reference scores: index order, or a seeded shuffle (authors' code)."""
    per_position: bool = False
    """Divide each Plackett-Luce term by the list length (a mean over ranked positions instead of the thesis'
    sum), so the ranking terms stay O(1) as the batch grows; the authors' code divides by the batch size too."""
    kernel_backend: ops.Backend = "auto"
    """Kernel of the Plackett-Luce terms (``scalefirst_kernels.ops.plackett_luce_loss``)."""


def rankclip_loss(
    img_ND: torch.Tensor,
    txt_ND: torch.Tensor,
    logit_scale: torch.Tensor | float,
    cfg: RankCLIPLossConfig = RankCLIPLossConfig(),
    generator: torch.Generator | None = None,
    rows: slice | None = None,
) -> dict[str, torch.Tensor]:
    """L = L_CLIP + lambda_in * L_in + lambda_cross * L_cross; returns every term and ``loss``.

    In-modal: ego t t^T ranked by reference v v^T. Cross-modal: ego v t^T ranked by reference t v^T.
    ``rows`` restricts every term to those ego rows against all columns (local-loss mode). Each term is a mean
    over independent rows, so the mean over ranks of the per-rank losses is the full loss.
    """
    r = rows or slice(0, img_ND.shape[0])
    scale = logit_scale if cfg.scale_by_temperature else 1.0
    clip = clip_loss(img_ND, txt_ND, logit_scale, rows)
    zero = clip.new_zeros(())
    pl = {"decay": cfg.decay, "tie_break": cfg.tie_break, "generator": generator, "backend": cfg.kernel_backend}
    l_in, l_cross = zero, zero
    if cfg.lambda_in:
        l_in = plackett_luce_loss(scale * txt_ND[r] @ txt_ND.T, img_ND[r] @ img_ND.T, **pl)
        if cfg.symmetric_in_modal:
            l_in = 0.5 * (l_in + plackett_luce_loss(scale * img_ND[r] @ img_ND.T, txt_ND[r] @ txt_ND.T, **pl))
    if cfg.lambda_cross:
        l_cross = plackett_luce_loss(scale * img_ND[r] @ txt_ND.T, txt_ND[r] @ img_ND.T, **pl)
    if cfg.per_position:
        l_in, l_cross = l_in / txt_ND.shape[0], l_cross / txt_ND.shape[0]
    loss = clip + cfg.lambda_in * l_in + cfg.lambda_cross * l_cross
    return {"loss": loss, "clip": clip, "in_modal": l_in, "cross_modal": l_cross}
