"""A latent-factor synthetic interaction world for tests and benchmarks.

Users and items get latent vectors drawn around a few shared cluster centres.
An item is chosen with probability proportional to popularity x exp(affinity),
and labels are Bernoulli(sigmoid(a_k * affinity + b_k)). So a user's positive
items resemble the user (signal for item-centric histories) and an item's
positive users resemble each other and the item (signal for user-centric
histories), while Zipf-like popularity and activity give the long-tailed list
lengths that make UC-Sampling necessary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from framework.data.ranking.interactions import Interactions

LATENT_DIM = 8
NUM_CLUSTERS = 6
_CLUSTER_SPREAD = 0.6  # noise around a cluster centre, relative to the unit-variance centres
_SELECTION_STRENGTH = 2.0  # how strongly affinity drives which item a user engages
_POPULARITY_EXPONENT = 1.0
_ACTIVITY_EXPONENT = 0.8
_MAX_CHUNK_CELLS = 1 << 22  # bounds the [users, items] CDF block sampled at once
_SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, eq=False)
class SyntheticWorld:
    """A generated log together with the latent factors that produced it.

    Raw user ids are 1..num_users and raw item ids 1..num_items; row ``id - 1``
    of the factor matrices belongs to that id.

    Attributes:
        interactions: the generated, time-sorted log.
        user_factors: float64 [num_users, LATENT_DIM], unit-norm rows.
        item_factors: float64 [num_items, LATENT_DIM], unit-norm rows.
        task_scale: float64 [T] a_k.
        task_bias: float64 [T] b_k.
    """

    interactions: Interactions
    user_factors: np.ndarray
    item_factors: np.ndarray
    task_scale: np.ndarray
    task_bias: np.ndarray

    def affinity(self, user_raw: np.ndarray, item_raw: np.ndarray) -> np.ndarray:
        """Returns <u, v> for aligned arrays of raw user and item ids."""
        u = self.user_factors[np.asarray(user_raw) - 1]
        v = self.item_factors[np.asarray(item_raw) - 1]
        return np.einsum("nd,nd->n", u, v)


def generate_synthetic(
    *,
    num_users: int = 2000,
    num_items: int = 1000,
    num_events: int = 50_000,
    task_names: Sequence[str] = ("like",),
    days: int = 1,
    seed: int = 0,
    start_ts: int = 1_700_000_000,
) -> Interactions:
    """Generates a synthetic interaction log; see :func:`generate_synthetic_world`."""
    return generate_synthetic_world(
        num_users=num_users,
        num_items=num_items,
        num_events=num_events,
        task_names=task_names,
        days=days,
        seed=seed,
        start_ts=start_ts,
    ).interactions


def generate_synthetic_world(
    *,
    num_users: int = 2000,
    num_items: int = 1000,
    num_events: int = 50_000,
    task_names: Sequence[str] = ("like",),
    days: int = 1,
    seed: int = 0,
    start_ts: int = 1_700_000_000,
) -> SyntheticWorld:
    """Generates a deterministic latent-factor interaction world.

    Args:
        num_users: users (raw ids 1..num_users).
        num_items: items (raw ids 1..num_items).
        num_events: events to draw.
        task_names: one label column per name; task 0 forms histories.
        days: timestamps are spread uniformly over this many days.
        seed: everything is a function of this seed.
        start_ts: unix time of the first possible event.

    Returns:
        The world: interactions plus the latent factors and task parameters.

    Raises:
        ValueError: on non-positive sizes or empty task_names.
    """
    for name, value in (
        ("num_users", num_users),
        ("num_items", num_items),
        ("num_events", num_events),
        ("days", days),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not task_names:
        raise ValueError("task_names must name at least one task")
    rng = np.random.default_rng(seed)

    user_f = _clustered_factors(rng, num_users)
    item_f = _clustered_factors(rng, num_items)
    activity = _zipf_weights(rng, num_users, _ACTIVITY_EXPONENT)
    popularity = _zipf_weights(rng, num_items, _POPULARITY_EXPONENT)

    users_E = rng.choice(num_users, size=num_events, p=activity / activity.sum())
    items_E = _sample_items(rng, users_E, user_f, item_f, np.log(popularity))
    ts_E = start_ts + rng.integers(0, days * _SECONDS_PER_DAY, size=num_events)

    num_tasks = len(task_names)
    # Task 0 is the reference; the others rescale and shift it, so tasks correlate but differ.
    task_scale = np.concatenate([[4.0], rng.uniform(2.0, 6.0, size=num_tasks - 1)])
    task_bias = np.concatenate([[-0.5], rng.uniform(-2.0, 0.5, size=num_tasks - 1)])
    affinity_E = np.einsum("nd,nd->n", user_f[users_E], item_f[items_E])
    logits_ET = affinity_E[:, None] * task_scale[None, :] + task_bias[None, :]
    labels_ET = (rng.random((num_events, num_tasks)) < 1.0 / (1.0 + np.exp(-logits_ET))).astype(np.float32)
    inter = Interactions.create(
        user_raw=users_E + 1,
        item_raw=items_E + 1,
        timestamp=ts_E,
        labels=labels_ET,
        task_names=tuple(task_names),
        source=f"synthetic(seed={seed}, users={num_users}, items={num_items}, events={num_events})",
    )
    return SyntheticWorld(inter, user_f, item_f, task_scale, task_bias)


def _clustered_factors(rng: np.random.Generator, n: int) -> np.ndarray:
    centres_CD = rng.normal(size=(NUM_CLUSTERS, LATENT_DIM))
    cluster_N = rng.integers(0, NUM_CLUSTERS, size=n)
    f_ND = centres_CD[cluster_N] + _CLUSTER_SPREAD * rng.normal(size=(n, LATENT_DIM))
    return f_ND / np.linalg.norm(f_ND, axis=1, keepdims=True)


def _zipf_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    # Random rank assignment so popularity is independent of id and of the latent clusters.
    ranks = rng.permutation(n)
    return 1.0 / (ranks + 1.0) ** exponent


def _sample_items(
    rng: np.random.Generator,
    users_E: np.ndarray,
    user_f: np.ndarray,
    item_f: np.ndarray,
    log_pop_I: np.ndarray,
) -> np.ndarray:
    """Draws one item per event from p(i | u) ∝ popularity_i * exp(s * <u, v_i>)."""
    num_users, num_items = user_f.shape[0], item_f.shape[0]
    items_E = np.empty(users_E.shape[0], dtype=np.int64)
    order = np.argsort(users_E, kind="stable")
    sorted_users = users_E[order]
    chunk = max(1, _MAX_CHUNK_CELLS // num_items)
    for lo in range(0, num_users, chunk):
        hi = min(num_users, lo + chunk)
        a, b = np.searchsorted(sorted_users, [lo, hi], side="left")
        if a == b:
            continue
        events = order[a:b]
        logits_UI = log_pop_I[None, :] + _SELECTION_STRENGTH * (user_f[lo:hi] @ item_f.T)
        w_UI = np.exp(logits_UI - logits_UI.max(axis=1, keepdims=True))
        cdf_UI = np.cumsum(w_UI, axis=1)
        cdf_UI /= cdf_UI[:, -1:]
        # Offsetting row r by r makes the flattened CDF globally sorted, so one
        # searchsorted samples every event of the chunk from its own user's row.
        local = users_E[events] - lo
        flat = (cdf_UI + np.arange(hi - lo)[:, None]).ravel()
        pos = np.searchsorted(flat, local + rng.random(events.shape[0]), side="right")
        items_E[events] = np.clip(pos - local * num_items, 0, num_items - 1)
    return items_E
