"""Fitting and predicting for the active-learning loop (small models, full-batch-ish Adam on the labeled set).

Legend: N = examples, C = classes. Inputs are tuples of modality tensors (one for single-modality pools).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(kw_only=True, frozen=True)
class FitConfig:
    steps: int = 200
    """Optimizer steps per fit (the labeled set is tiny: steps, not epochs, keep the work per round fixed)."""
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    """L2 coefficient (decoupled AdamW decay); DAO's Hessian adds it as part of its damping."""


def _loss(model: nn.Module, xs: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
    own = getattr(model, "loss", None)
    return own(*xs, y) if callable(own) else F.cross_entropy(model(*xs), y)


def fit(model: nn.Module, xs: tuple[torch.Tensor, ...], y: torch.Tensor, cfg: FitConfig, seed: int) -> nn.Module:
    """Train ``model`` in place on (xs, y) with minibatches drawn with replacement; deterministic given ``seed``."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    n = y.numel()
    for _ in range(cfg.steps):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        opt.zero_grad(set_to_none=True)
        _loss(model, tuple(x[idx] for x in xs), y[idx]).backward()
        opt.step()
    model.eval()
    return model


@torch.no_grad()
def _batched(fn, model: nn.Module, xs: tuple[torch.Tensor, ...], batch_size: int) -> torch.Tensor:
    model.eval()
    # max(n, 1): an empty pool still yields one (empty) batch, so the result is [0, C], not an error.
    return torch.cat([fn(*(x[i : i + batch_size] for x in xs)) for i in range(0, max(xs[0].shape[0], 1), batch_size)])


def predict_logits(model: nn.Module, xs: tuple[torch.Tensor, ...], batch_size: int = 2048) -> torch.Tensor:
    return _batched(model, model, xs, batch_size)


def predict_probs(model: nn.Module, xs: tuple[torch.Tensor, ...], batch_size: int = 2048) -> torch.Tensor:
    return torch.softmax(predict_logits(model, xs, batch_size), dim=1)


def embeddings(model: nn.Module, xs: tuple[torch.Tensor, ...], batch_size: int = 2048) -> torch.Tensor:
    return _batched(model.embed, model, xs, batch_size)


def accuracy(model: nn.Module, xs: tuple[torch.Tensor, ...], y: torch.Tensor) -> float:
    return float((predict_logits(model, xs).argmax(1) == y).float().mean())
