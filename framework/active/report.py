"""Summaries and figures of active-learning runs: accuracy vs labels per strategy (mean ± std over seeds), the
heat map of (strategy − random) accuracy per round × seed (thesis fig. 2.1), paired tests across seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats


def accuracy_matrix(by_seed: dict[int, dict[str, Any]], per_modality: str | None = None) -> np.ndarray:
    """[seeds, rounds] test accuracy (seeds in order), of the fused model or of one modality's head."""
    pick = (lambda r: r["per_modality"][per_modality]) if per_modality else (lambda r: r["accuracy"])
    return np.array([[pick(r) for r in st["rounds"]] for _, st in sorted(by_seed.items())])


def paired_difference(a: dict[int, dict], b: dict[int, dict]) -> dict[str, list]:
    """Mean over seeds of a - b per round, and the paired t-test's two-sided p-value per round (None where the
    difference is identically zero, e.g. round 0: the same initial labels)."""
    A, B = accuracy_matrix(a), accuracy_matrix(b)
    diff = A - B
    p = []
    for r in range(diff.shape[1]):
        d = diff[:, r]
        p.append(None if np.allclose(d, d[0]) or d.size < 2 else float(stats.ttest_rel(A[:, r], B[:, r]).pvalue))
    return {"mean": diff.mean(0).tolist(), "p_value": p}


def plot_curves(results: dict[str, dict[int, dict]], path: Path, title: str, per_modality: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, by_seed in results.items():
        first = next(iter(by_seed.values()))
        labels = [r["labels"] for r in first["rounds"]]
        acc = accuracy_matrix(by_seed, per_modality)
        m, s = acc.mean(0), acc.std(0)
        ax.plot(labels, m, marker="o", ms=3, label=strategy)
        ax.fill_between(labels, m - s, m + s, alpha=0.15)
    ax.set_xlabel("labeled examples")
    ax.set_ylabel("test accuracy" + (f" ({per_modality} head)" if per_modality else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heatmap(results: dict[str, dict[int, dict]], path: Path, title: str, baseline: str = "random") -> None:
    """One panel per strategy: (strategy − baseline) accuracy, seeds × rounds, diverging colours around 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [s for s in results if s != baseline]
    base = accuracy_matrix(results[baseline])
    diffs = {s: accuracy_matrix(results[s]) - base for s in others}
    vmax = max(float(np.abs(d).max()) for d in diffs.values()) or 1e-3
    fig, axes = plt.subplots(len(others), 1, figsize=(7, 1.1 + 0.9 * len(others)), squeeze=False)
    for i, (ax, s) in enumerate(zip(axes[:, 0], others, strict=True)):
        im = ax.imshow(diffs[s], cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_ylabel(s, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_yticks([])
        rounds = range(diffs[s].shape[1])
        ax.set_xticks(rounds, labels=[str(r) for r in rounds] if i == len(others) - 1 else [])
    axes[-1, 0].set_xlabel("round (rows of a panel: seeds)")
    fig.subplots_adjust(left=0.2, right=0.78, hspace=0.15)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, cax=fig.add_axes((0.82, 0.15, 0.03, 0.7)), label=f"accuracy − {baseline}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
