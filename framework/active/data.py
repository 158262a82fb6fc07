"""Offline pools for active learning: real digits, a larger rendered pool, and a two-modality digits pool.

Legend: N = pool (candidates), T = test points, C = classes.

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digit scans (UCI), pixel values / 16, a stratified third
  held out as the test set (``data.seed`` fixes the split for every AL seed), the rest is the pool: the thesis'
  low-budget protocol (10 initial labels, 10 per round).
- ``shapes``: ``num_pool + num_test`` renders of the project's offline shapes (framework/data/clip/offline_images:
  five shapes in six colours, sizes, positions, rotation, noisy tinted backgrounds) at ``image_size`` px, class =
  shape: a pool of >= 10k images, so 10 labels per round is far below 1% of it.
- ``digits_multimodal``: modality 1 is the digit scan; modality 2 is a weak, generated one: a 16-d vector
  ``mu[y] + noise`` with class means ``mu`` drawn once (``data.seed``) and Gaussian noise of std ``m2_noise``
  (default 1.6: alone, a linear model reaches ~35-45% where the scan reaches ~90%). With 1-in-``m2_flip`` labels'
  vectors drawn from a random other class, it is also sometimes wrong. The image dominates, so a late-fusion model
  leans on it: the modality imbalance BMMAL targets (thesis ch. 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@dataclass(frozen=True)
class Pool:
    """Candidates (``x``, with hidden labels ``y``) and a held-out test set; one tensor per modality."""

    x: tuple[torch.Tensor, ...]
    y: torch.Tensor
    x_test: tuple[torch.Tensor, ...]
    y_test: torch.Tensor
    num_classes: int
    name: str

    def __len__(self) -> int:
        return self.y.numel()

    @property
    def num_modalities(self) -> int:
        return len(self.x)


def _split(X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    return train_test_split(X, y, test_size=test_fraction, stratify=y, random_state=seed)


def digits_pool(seed: int = 0, test_fraction: float = 1 / 3) -> Pool:
    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None]  # [1797, 1, 8, 8]
    x_tr, x_te, y_tr, y_te = _split(X, d.target, test_fraction, seed)
    t = torch.from_numpy
    return Pool((t(x_tr),), t(y_tr).long(), (t(x_te),), t(y_te).long(), 10, "digits")


def shapes_pool(num_pool: int = 12_000, num_test: int = 2_000, image_size: int = 16, seed: int = 0) -> Pool:
    from framework.data.clip.offline_images import SHAPES, shape_samples

    samples = shape_samples(num_pool + num_test, seed, size=image_size)
    X = np.stack([np.asarray(s.image, dtype=np.float32) / 255.0 for s in samples]).transpose(0, 3, 1, 2)
    y = np.array([SHAPES.index(s.labels["shape"]) for s in samples])
    t = torch.from_numpy
    return Pool((t(X[:num_pool]),), t(y[:num_pool]).long(), (t(X[num_pool:]),), t(y[num_pool:]).long(),
                len(SHAPES), "shapes")  # fmt: skip


def digits_multimodal_pool(
    seed: int = 0, test_fraction: float = 1 / 3, m2_dim: int = 16, m2_noise: float = 1.6, m2_flip: int = 10
) -> Pool:
    d = load_digits()
    rng = np.random.default_rng([seed, 2])
    mu = rng.normal(size=(10, m2_dim)).astype(np.float32)
    y = d.target
    wrong = rng.integers(0, m2_flip, size=y.shape) == 0
    source = np.where(wrong, (y + rng.integers(1, 10, size=y.shape)) % 10, y)
    m2 = mu[source] + rng.normal(scale=m2_noise, size=(y.size, m2_dim)).astype(np.float32)
    X1 = (d.images / 16.0).astype(np.float32)[:, None]
    idx = np.arange(y.size)
    i_tr, i_te = _split(idx, y, test_fraction, seed)[:2]
    t = torch.from_numpy
    return Pool((t(X1[i_tr]), t(m2[i_tr])), t(y[i_tr]).long(), (t(X1[i_te]), t(m2[i_te])), t(y[i_te]).long(), 10,
                "digits_multimodal")  # fmt: skip


POOLS = {"digits": digits_pool, "shapes": shapes_pool, "digits_multimodal": digits_multimodal_pool}
