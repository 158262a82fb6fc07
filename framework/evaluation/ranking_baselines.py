"""Id-only baselines for the ranking protocols: what a model gets from "who" and "what" alone.

A DIN-style model that does not beat these on a split has learned nothing from the histories there (or the
protocol hides the signal). Both are fit on the train split of a :class:`~framework.data.ranking.RankingData`
and scored on its test (or validation) split, exactly the examples the models are scored on.

- ``item_rate``: the item's positive rate in train (Laplace-smoothed towards the global rate; unseen items get
  the global rate).
- ``logreg``: logistic regression on one-hot user + item ids (a biased factor-free MF: one bias per user and per
  item), scikit-learn's L2-regularized ``LogisticRegression`` (lbfgs) on a sparse design matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.linear_model import LogisticRegression

from framework.data.ranking.batches import RankingData
from framework.metrics.ranking import auc, nce


@dataclass(frozen=True)
class BaselineResult:
    auc: float
    nce: float
    num_examples: int


def _labels(data: RankingData, idx: np.ndarray) -> np.ndarray:
    inter = data.interactions
    return inter.labels[idx, inter.history_task].astype(np.float64)


def _score(p: np.ndarray, y: np.ndarray) -> BaselineResult:
    p_t, y_t = torch.from_numpy(p), torch.from_numpy(y)
    return BaselineResult(auc=auc(p_t, y_t), nce=nce(p_t, y_t), num_examples=int(y.size))


def item_rate(data: RankingData, prior_strength: float = 1.0) -> BaselineResult:
    """AUC/NCE of the smoothed train positive rate of each test example's item."""
    inter = data.interactions
    train, test = data.train_indices, data.test_indices
    y_train = _labels(data, train)
    global_rate = float(y_train.mean()) if y_train.size else 0.5
    items, inverse = np.unique(inter.item_raw[train], return_inverse=True)
    positives = np.bincount(inverse, weights=y_train, minlength=items.size)
    counts = np.bincount(inverse, minlength=items.size)
    rate = (positives + prior_strength * global_rate) / (counts + prior_strength)
    pos = np.searchsorted(items, inter.item_raw[test])
    seen = (pos < items.size) & (items[np.minimum(pos, items.size - 1)] == inter.item_raw[test])
    p = np.full(test.size, global_rate)
    p[seen] = rate[pos[seen]]
    return _score(p, _labels(data, test))


def _one_hot(user_code: np.ndarray, item_code: np.ndarray, num_users: int, num_items: int) -> sp.csr_matrix:
    n = user_code.size
    rows = np.repeat(np.arange(n), 2)
    cols = np.stack([user_code, num_users + item_code], axis=1).ravel()
    return sp.csr_matrix((np.ones(2 * n), (rows, cols)), shape=(n, num_users + num_items))


def logreg(data: RankingData, C: float = 1.0) -> BaselineResult:
    """AUC/NCE of a logistic regression on one-hot user + item ids (ids unseen in train: all-zero columns)."""
    inter = data.interactions
    train, test = data.train_indices, data.test_indices
    users, user_code = np.unique(inter.user_raw, return_inverse=True)
    items, item_code = np.unique(inter.item_raw, return_inverse=True)
    x = _one_hot(user_code, item_code, users.size, items.size)
    model = LogisticRegression(C=C, max_iter=1000)
    model.fit(x[train], _labels(data, train))
    return _score(model.predict_proba(x[test])[:, 1], _labels(data, test))
