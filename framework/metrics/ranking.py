"""Per-task ranking metrics (AUC, NCE, log loss, label rate) that are correct across ranks.

AUC and NCE are not means of per-example quantities that could be averaged across ranks: AUC compares every positive
with every negative, including pairs on different ranks, and NCE normalizes by the global label rate. So
:class:`RankingMetrics` gathers every rank's predictions and computes the metrics once on the global data, identically
on every rank; it never averages per-rank metrics.

All arithmetic is float64. With 0/1 weights the AUC numerator and denominator are exact integers (or halves), so the
result is the correctly rounded Mann–Whitney U / (P·N).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _flat64(name: str, t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t.detach().reshape(-1).to(torch.float64)


def _prepare(
    values: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    values_name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten to float64, check shapes and weights, and drop rows whose weight is 0."""
    if values.shape != labels.shape:
        raise ValueError(
            f"{values_name} and labels must have the same shape, got {tuple(values.shape)} and {tuple(labels.shape)}"
        )
    v = _flat64(values_name, values)
    y = _flat64("labels", labels)
    if weights is None:
        return v, y, torch.ones_like(v)
    if weights.shape != values.shape:
        raise ValueError(
            f"weights must have the shape of {values_name}, got {tuple(weights.shape)} and {tuple(values.shape)}"
        )
    w = _flat64("weights", weights)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and nonnegative")
    keep = w > 0
    return v[keep], y[keep], w[keep]


def auc(scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """Exact ROC AUC: the Mann–Whitney U statistic over all positive/negative pairs, ties counted as 1/2.

    AUC = Σ_{i pos, j neg} w_i·w_j·([s_i > s_j] + ½[s_i = s_j]) / (W_pos·W_neg). Computed in O(n log n): sort the
    scores, group equal scores, and credit each group's positive weight with the negative weight strictly below the
    group plus half the negative weight inside it (the average-rank treatment of ties).

    Args:
        scores: Any shape; higher means more likely positive (logits or probabilities: AUC is invariant to a
            strictly increasing transform).
        labels: Same shape as ``scores``, values in {0, 1}.
        weights: Optional, same shape, finite and nonnegative. Rows with weight 0 are dropped; with 0/1 masks this
            is the AUC of the kept rows. General weights weight each pair by w_i·w_j.

    Returns:
        The AUC in [0, 1]; ``nan`` when the kept rows do not contain both classes (AUC is undefined) or when a kept
        score is NaN (a diverged model has no meaningful ranking).

    Raises:
        ValueError: Mismatched shapes, labels outside {0, 1}, or negative / non-finite weights.
    """
    s, y, w = _prepare(scores, labels, weights, "scores")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("auc needs binary labels in {0, 1}")
    pos_w = w * y
    neg_w = w - pos_w
    total_pos = pos_w.sum()
    total_neg = neg_w.sum()
    if total_pos.item() == 0 or total_neg.item() == 0 or bool(torch.isnan(s).any()):
        return math.nan
    s_sorted, order = torch.sort(s)
    _, counts = torch.unique_consecutive(s_sorted, return_counts=True)
    group = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    pos_g = torch.zeros(counts.numel(), dtype=torch.float64).index_add_(0, group, pos_w[order])
    neg_g = torch.zeros(counts.numel(), dtype=torch.float64).index_add_(0, group, neg_w[order])
    neg_below = torch.cumsum(neg_g, 0) - neg_g
    u = (pos_g * (neg_below + 0.5 * neg_g)).sum()
    return (u / (total_pos * total_neg)).item()


def _binary_entropy(p: float) -> float:
    return -p * math.log(p) - (1.0 - p) * math.log(1.0 - p)


def _check_soft_labels(y: torch.Tensor) -> None:
    if not bool(((y >= 0) & (y <= 1)).all()):
        raise ValueError("labels must lie in [0, 1]")


def _normalized(ce: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[float, float, float]:
    """(NCE, log loss, label rate) from per-row cross-entropies of the kept rows."""
    total_w = w.sum().item()
    if total_w == 0:
        return math.nan, math.nan, math.nan
    logloss = (w * ce).sum().item() / total_w
    label_rate = (w * y).sum().item() / total_w
    if not 0.0 < label_rate < 1.0:
        return math.nan, logloss, label_rate
    return logloss / _binary_entropy(label_rate), logloss, label_rate


def nce(
    probs: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    eps: float = 1e-7,
) -> float:
    """Normalized cross entropy: mean BCE(p, y) / H(p̄), with p̄ the (weighted) label rate.

    H(p) = -p·ln p - (1-p)·ln(1-p) is the log loss of always predicting the background rate, so NCE < 1 means
    better than that constant predictor and NCE = 1 means no better.

    Args:
        probs: Predicted probabilities, clamped to [eps, 1 - eps] so that a confident mistake costs a finite amount.
        labels: Same shape, values in [0, 1].
        weights: Optional, same shape, finite and nonnegative; rows with weight 0 are dropped.
        eps: Clamp for ``probs``. Prefer :func:`nce_from_logits` when logits are available: it needs no clamp.

    Returns:
        NCE; ``nan`` when p̄ is 0 or 1 (or no row has positive weight).

    Raises:
        ValueError: Mismatched shapes, labels outside [0, 1], or invalid weights.
    """
    p, y, w = _prepare(probs, labels, weights, "probs")
    _check_soft_labels(y)
    p = p.clamp(eps, 1.0 - eps)
    ce = -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p))
    return _normalized(ce, y, w)[0]


def nce_from_logits(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """NCE from logits, with the cross entropy computed stably (BCE-with-logits, no clamping).

    Args:
        logits: Raw scores; p = sigmoid(logits).
        labels: Same shape, values in [0, 1].
        weights: Optional, same shape, finite and nonnegative; rows with weight 0 are dropped.

    Returns:
        NCE; ``nan`` when the label rate is 0 or 1 (or no row has positive weight).

    Raises:
        ValueError: Mismatched shapes, labels outside [0, 1], or invalid weights.
    """
    return _logit_metrics(logits, labels, weights)[0]


def _logit_metrics(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None
) -> tuple[float, float, float]:
    x, y, w = _prepare(logits, labels, weights, "logits")
    _check_soft_labels(y)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    return _normalized(ce, y, w)


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_variable(t: torch.Tensor) -> torch.Tensor:
    """All-gather tensors whose first dimension differs per rank; concatenated in rank order on every rank.

    The per-rank shapes and dtypes are exchanged first, so a rank with a mismatching trailing shape or dtype makes
    every rank raise the same error instead of leaving its peers blocked in a collective. Each rank's tensor is
    then zero-padded to the largest first dimension, all-gathered and trimmed. A collective: every rank must call it.

    Args:
        t: Tensor of shape (n_rank, *trailing) on the device of the backend (CPU for gloo, CUDA for NCCL); n_rank
            may be 0. ``trailing`` and the dtype must agree across ranks.

    Returns:
        The tensor of shape (Σ n_rank, *trailing); ``t`` itself when torch.distributed is not initialized or the world
        size is 1.

    Raises:
        ValueError: ``t`` is 0-dimensional, or ranks disagree on the trailing shape or dtype.
    """
    if t.dim() == 0:
        raise ValueError("gather_variable needs a tensor with a first dimension, got a 0-d tensor")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    world_size = dist.get_world_size()
    metas: list[tuple[tuple[int, ...], str] | None] = [None] * world_size
    dist.all_gather_object(metas, (tuple(t.shape), str(t.dtype)))
    shapes = [m[0] for m in metas]  # type: ignore[index]
    dtypes = {m[1] for m in metas}  # type: ignore[index]
    trailing = {s[1:] for s in shapes}
    if len(trailing) != 1 or len(dtypes) != 1:
        raise ValueError(f"gather_variable: ranks disagree on trailing shape or dtype: {metas}")
    sizes = [s[0] for s in shapes]
    max_n = max(sizes)
    if max_n == 0:
        return t
    # gloo has no bool all_gather; uint8 carries the same values.
    send = t.to(torch.uint8) if t.dtype == torch.bool else t
    padded = send.new_zeros((max_n, *t.shape[1:]))
    padded[: t.shape[0]] = send
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    out = torch.cat([g[:n] for g, n in zip(gathered, sizes, strict=True)])
    return out.to(torch.bool) if t.dtype == torch.bool else out


class RankingMetrics:
    """Accumulates multi-task predictions and computes global AUC / NCE / log loss / label rate per task.

    ``update`` keeps detached float64 copies on CPU; ``compute`` all-gathers them from every rank (uneven per-rank
    counts are fine) and evaluates each metric once on the global data, so every rank returns the same dict and the
    values equal those of a single process that saw all the data.

    Example::

        metrics = RankingMetrics(["click", "like"])
        for batch in loader:
            metrics.update(model(batch), batch.labels)   # (B, 2) logits and labels
        results = metrics.compute()                      # on every rank: {"click/auc": ..., "num_examples": ...}
        metrics.reset()
    """

    def __init__(self, task_names: Sequence[str]) -> None:
        """Create an empty accumulator.

        Args:
            task_names: One name per task, in the column order of the logits/labels passed to ``update``.

        Raises:
            ValueError: No task names, or duplicates (keys would collide).
        """
        names = list(task_names)
        if not names:
            raise ValueError("RankingMetrics needs at least one task name")
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        self.task_names: tuple[str, ...] = tuple(names)
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._weights: list[torch.Tensor] = []

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def _as_bt(self, name: str, t: torch.Tensor) -> torch.Tensor:
        # A single-task model may emit (B,) rather than (B, 1).
        if t.dim() == 1 and self.num_tasks == 1:
            t = t.unsqueeze(1)
        if t.dim() != 2 or t.shape[1] != self.num_tasks:
            raise ValueError(f"{name} must have shape (B, {self.num_tasks}), got {tuple(t.shape)}")
        return t.detach().to(device="cpu", dtype=torch.float64)

    def update(
        self,
        logits_BT: torch.Tensor,
        labels_BT: torch.Tensor,
        weights_B: torch.Tensor | None = None,
    ) -> None:
        """Accumulate one batch (no collective; call on each rank with its local batch).

        Args:
            logits_BT: (B, T) logits, one column per task ((B,) accepted when T == 1).
            labels_BT: (B, T) labels in [0, 1] (AUC additionally needs them in {0, 1}).
            weights_B: Optional (B,) nonnegative per-example weight (0/1 mask: 0 drops the example from every
                task), or (B, T) for a per-task mask. ``None`` weighs every example 1.

        Raises:
            ValueError: Shapes do not match (B, T) / (B,).
        """
        logits = self._as_bt("logits_BT", logits_BT)
        labels = self._as_bt("labels_BT", labels_BT)
        if labels.shape != logits.shape:
            raise ValueError(f"labels_BT shape {tuple(labels.shape)} != logits_BT shape {tuple(logits.shape)}")
        if weights_B is None:
            weights = torch.ones_like(logits)
        else:
            weights = weights_B.detach().to(device="cpu", dtype=torch.float64)
            if weights.shape == (logits.shape[0],):
                weights = weights.unsqueeze(1).expand_as(logits).clone()
            elif weights.shape != logits.shape:
                raise ValueError(
                    f"weights_B must have shape ({logits.shape[0]},) or {tuple(logits.shape)}, "
                    f"got {tuple(weights.shape)}"
                )
        self._logits.append(logits)
        self._labels.append(labels)
        self._weights.append(weights)

    def compute(self) -> dict[str, float]:
        """Gather every rank's data and compute the global metrics (a collective: every rank must call it).

        Returns:
            ``{f"{task}/auc", f"{task}/nce", f"{task}/logloss", f"{task}/label_rate"}`` for each task, plus
            ``"num_examples"`` (global number of rows with a non-zero weight for some task: padding rows do
            not count). Identical on every rank.
            Undefined metrics (e.g. AUC with one class, anything with no data) are ``nan``.

        Raises:
            ValueError: Invalid labels or weights in the accumulated data (raised on every rank alike).
        """
        t = self.num_tasks
        if self._logits:
            local = torch.cat([torch.cat(self._logits), torch.cat(self._labels), torch.cat(self._weights)], dim=1)
        else:
            local = torch.zeros((0, 3 * t), dtype=torch.float64)
        # One gather for all three tensors: fewer collectives, and rows stay aligned by construction.
        if dist.is_available() and dist.is_initialized():
            local = local.to(_collective_device())
        merged = gather_variable(local).cpu()
        logits, labels, weights = merged[:, :t], merged[:, t : 2 * t], merged[:, 2 * t :]
        out: dict[str, float] = {}
        for i, task in enumerate(self.task_names):
            x, y, w = logits[:, i], labels[:, i], weights[:, i]
            # AUC on logits: same ranking as on sigmoid(logits) without the ties float saturation would create.
            out[f"{task}/auc"] = auc(x, y, w)
            out[f"{task}/nce"], out[f"{task}/logloss"], out[f"{task}/label_rate"] = _logit_metrics(x, y, w)
        out["num_examples"] = float((weights > 0).any(dim=1).sum()) if merged.shape[0] else 0.0
        return out

    def reset(self) -> None:
        """Drop everything accumulated (local only; no collective)."""
        self._logits.clear()
        self._labels.clear()
        self._weights.clear()
