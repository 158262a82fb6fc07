"""Visual-dependence token re-weighting for LVLM fine-tuning (seed 001, chapter 5; shared/methods/lvlm.md).

Legend: B = batch, L = sequence positions (after the next-token shift), T_r = tokens of one response.

- Noised image v* (VCD's forward diffusion): betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5,
  abar = cumprod(1 - betas), v* = sqrt(abar[t]) v + sqrt(1 - abar[t]) eps, indexed from 0 as VCD's public code
  does (t = 900 by default), applied to the normalized pixel tensor.
- d(y_t) = (p - p*) / max(p, p*) in [-1, 1] (eq. 5.1), from the label tokens' log-probabilities under v and v*,
  computed per batch without grad in eval mode (:func:`batch_dependence`). Classes: image-positive d >= 0.25,
  image-negative d <= -0.25, else image-invariant.
- w_neg = max(-d, 0) (default, emphasizes image-negative tokens), w_pos = max(d, 0) (eqs. 5.3-5.4); per response the
  weights are T_r * softmax(tau * w) (mean 1: the loss keeps its magnitude; tau = 0 gives 1 everywhere, i.e. MLE),
  then the EOS weight is raised to >= 1 (eq. 5.5 and the text after it). A response is a maximal run of supervised
  positions (one assistant turn of a multi-turn conversation).
- Re-weighting starts after ``start_fraction`` of training (default 0.5).
- Data filter: score each sample by sum_t d(y_t); drop the top and/or bottom fractions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from framework.data.lvlm.chat import IGNORE

Variant = Literal["neg", "pos"]


def vcd_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    betas = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (5e-3 - 1e-5) + 1e-5
    return torch.cumprod(1 - betas, dim=0)


def noised_pixels(
    pixels: torch.Tensor, t: int = 900, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """v* = sqrt(abar_t) v + sqrt(1 - abar_t) eps (t in [0, 999]); eps drawn from ``generator`` unless ``noise``
    gives it (the trainer draws it per sample, so d does not depend on how a batch is split over ranks)."""
    abar = vcd_alphas_cumprod()
    if not 0 <= t < abar.numel():
        raise ValueError(f"noise step must be in [0, {abar.numel() - 1}], got {t}")
    if noise is None:
        eps = torch.randn(pixels.shape, generator=generator, dtype=pixels.dtype, device="cpu").to(pixels.device)
    else:
        eps = noise.to(pixels.device, pixels.dtype)
    a = float(abar[t])
    return a**0.5 * pixels + (1 - a) ** 0.5 * eps


def visual_dependence(logp: torch.Tensor, logp_noisy: torch.Tensor) -> torch.Tensor:
    """d = (p - p*) / max(p, p*) from log-probabilities (exact, no overflow: one exp of a non-positive number)."""
    return torch.where(logp >= logp_noisy, 1 - torch.exp(logp_noisy - logp), torch.exp(logp - logp_noisy) - 1)


def token_classes(d: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """+1 image-positive, -1 image-negative, 0 image-invariant."""
    return (d >= threshold).long() - (d <= -threshold).long()


def response_ids(labels: torch.Tensor) -> torch.Tensor:
    """[B, L] index of the response (maximal run of supervised positions) each position belongs to, -1 elsewhere;
    indices are global over the batch."""
    sup = labels != IGNORE
    start = sup & ~F.pad(sup[:, :-1], (1, 0), value=False)
    run = torch.cumsum(start.flatten(), 0).view_as(labels) - 1
    return torch.where(sup, run, torch.full_like(run, -1))


def token_weights(
    d: torch.Tensor, labels: torch.Tensor, eos_id: int, *, tau: float = 0.5, variant: Variant = "neg"
) -> torch.Tensor:
    """[B, L] loss weights (0 at unsupervised positions): T_r softmax(tau w) per response, EOS raised to >= 1."""
    if variant not in ("neg", "pos"):
        raise ValueError(f"variant must be 'neg' or 'pos', got {variant!r}")
    w = (-d if variant == "neg" else d).clamp_min(0.0)
    rid = response_ids(labels)
    sup = rid >= 0
    n = int(rid.max()) + 1 if sup.any() else 0
    z = (tau * w).double()
    flat_rid, flat_z = rid[sup], z[sup]
    zmax = torch.full((n,), -torch.inf, dtype=z.dtype, device=z.device).scatter_reduce(0, flat_rid, flat_z, "amax")
    e = torch.exp(flat_z - zmax[flat_rid])
    denom = torch.zeros(n, dtype=z.dtype, device=z.device).index_add_(0, flat_rid, e)
    count = torch.zeros(n, dtype=z.dtype, device=z.device).index_add_(0, flat_rid, torch.ones_like(e))
    weights = torch.zeros_like(z)
    weights[sup] = count[flat_rid] * e / denom[flat_rid]
    eos = sup & (labels == eos_id)
    weights[eos] = weights[eos].clamp_min(1.0)
    return weights.to(d.dtype)


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_t w_t (-log p(y_t)) / (supervised tokens); ``weights=None`` is the MLE mean cross-entropy."""
    nll = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE, reduction="none")
    sup = (labels != IGNORE).flatten()
    w = torch.ones_like(nll) if weights is None else weights.flatten().to(nll.dtype)
    return (w * nll)[sup].sum() / sup.sum().clamp_min(1)


def label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(y_t) at every position (0 where unsupervised)."""
    safe = labels.clamp_min(0)
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe[..., None])[..., 0]
    return torch.where(labels != IGNORE, lp, torch.zeros_like(lp))


@torch.no_grad()
def batch_dependence(
    model: nn.Module | Callable[..., Any], batch: dict[str, torch.Tensor], pixels: torch.Tensor, t: int = 900,
    generator: torch.Generator | None = None, *, noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(d [B, L-1], shifted labels [B, L-1]) for a batch: clean and noised forward passes without grad.

    ``model``: an ``nn.Module``, put in eval mode for the two passes (its mode is restored), or a forward callable
    the caller has put in eval mode (the trainer passes its engine, so ZeRO-3 gathering and autocast apply)."""
    module = model if isinstance(model, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        labels = batch["labels"][:, 1:]
        lp = label_logprobs(model(**inputs, pixel_values=pixels)["logits"][:, :-1], labels)
        noisy = noised_pixels(pixels, t, generator, noise)
        lp_noisy = label_logprobs(model(**inputs, pixel_values=noisy)["logits"][:, :-1], labels)
    finally:
        if module is not None:
            module.train(was_training)
    d = visual_dependence(lp, lp_noisy)
    return torch.where(labels != IGNORE, d, torch.zeros_like(d)), labels


def reweighting_active(step: int, total_steps: int, start_fraction: float = 0.5) -> bool:
    return step >= start_fraction * total_steps


def filter_by_dependence(scores: Sequence[float], drop_top: float = 0.0, drop_bottom: float = 0.0) -> list[int]:
    """Indices kept after dropping the floor(drop_top N) highest and floor(drop_bottom N) lowest scores
    (sum_t d(y_t) per sample; ties broken by index), in their original order."""
    if not (0 <= drop_top <= 1 and 0 <= drop_bottom <= 1 and drop_top + drop_bottom <= 1):
        raise ValueError(f"drop fractions must be in [0, 1] and sum to <= 1, got top {drop_top}, bottom {drop_bottom}")
    n = len(scores)
    order = sorted(range(n), key=lambda i: (scores[i], i))
    low, high = int(drop_bottom * n), int(drop_top * n)
    dropped = set(order[:low]) | set(order[n - high :] if high else [])
    return [i for i in range(n) if i not in dropped]
