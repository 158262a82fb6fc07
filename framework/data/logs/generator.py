"""A synthetic production world with a dynamic item inventory: the default data of the daily jobs.

What it models (the properties the UCR chapter's production results hinge on, §3.5.2):

* **Users**: a fixed population with heavy-tailed activeness (lognormal weights, so a few users produce most
  events and many produce a handful; the featurizer buckets them into the seed's 5 activeness segments).
* **Items**: ``new_items_per_day`` created every day at uniform times, each living ``lifespan`` days (lognormal,
  clipped to [1, ``max_lifespan_days``]: days to weeks) with a power-law (Pareto) popularity. An item can only be
  shown while alive. The cumulative item set grows linearly in days while the user set is fixed: ICR's id space
  grows without bound, UCR's does not.
* **Engagements**: 6 label columns, 1 negative (``skip`` = no click) + 5 positive types. ``click`` has
  probability ``sigmoid(b + s·a)`` with the affinity ``a = <u, v>/sqrt(k) + item quality``; ``like``, ``share``,
  ``follow`` and ``complete`` are conditional on the click, each with its own base rate and affinity weight.
* **Drift**: user tastes follow an AR(1) walk, ``u_d = rho·u_{d-1} + sqrt(1 - rho²)·eps_d``, so what a model
  learned decays with the days (the seed's fig. 3.6).

Deterministic by seed: day ``d``, part ``p`` draws from ``numpy.random.default_rng([seed, tag, d, p])`` and the
drift of day ``d`` from its own stream, so a day's rows depend only on the seed and ``d`` (not on which days are
already on disk or on chunking). Streaming: the
state carried from day to day is the users' factors and the items alive in the last ``max_lifespan_days`` days,
whatever the number of days; one part (``events_per_day / parts_per_day`` rows) is in memory at a time.
Raw ids are 63-bit hashes of the user/item index (production ids are not dense row numbers).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from framework.data.logs.schema import DEFAULT_LABELS, SECONDS_PER_DAY, LogSchema, day_start_ts
from framework.data.logs.writer import write_day
from framework.data.ranking.hashing import splitmix64

_TAG_USERS, _TAG_ITEMS, _TAG_DRIFT, _TAG_EVENTS = 1, 2, 3, 4
_DAY_OFFSET = 1 << 16  # keeps back-catalogue days (d < 0) non-negative in seeds and item indices
_ID_MASK = np.uint64(0x7FFF_FFFF_FFFF_FFFF)
_USER_ID_SALT, _ITEM_ID_SALT = np.uint64(0x05E4_11D5), np.uint64(0x17E3_11D5)


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """Knobs of :func:`generate_logs` (``scalefirst gen-logs --help`` lists them)."""

    num_users: int = 20_000
    events_per_day: int = 200_000
    new_items_per_day: int = 2_000
    mean_lifespan_days: float = 5.0
    max_lifespan_days: int = 21
    popularity_alpha: float = 1.8
    """Pareto shape of item popularity (smaller: heavier tail; 1.8: the top 10% of items get about a third of the
    impressions, and no single item more than a few per mille)."""
    activeness_sigma: float = 1.5
    """Lognormal sigma of user activeness weights (larger: heavier tail)."""
    factor_dim: int = 8
    drift_rho: float = 0.9
    """Day-to-day correlation of user factors (1: no drift)."""
    affinity_scale: float = 2.0
    parts_per_day: int = 4
    row_group_rows: int = 65_536
    start_day: dt.date = dt.date(2026, 1, 1)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_users", "events_per_day", "new_items_per_day", "max_lifespan_days", "factor_dim",
                     "parts_per_day", "row_group_rows"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.drift_rho <= 1.0:
            raise ValueError(f"drift_rho must be in [0, 1], got {self.drift_rho}")
        if self.mean_lifespan_days <= 0 or self.popularity_alpha <= 0 or self.activeness_sigma < 0:
            raise ValueError("mean_lifespan_days and popularity_alpha must be > 0, activeness_sigma >= 0")


# (label, base logit, weight of the affinity); click is the gate, the others are conditional on it.
_CLICK = ("click", -0.8, 1.0)
_AFTER_CLICK = (("like", -1.6, 1.0), ("share", -3.0, 1.2), ("follow", -3.4, 1.4), ("complete", 0.0, 0.8))


def raw_ids(index: np.ndarray, salt: np.uint64, seed: int) -> np.ndarray:
    """Positive 63-bit raw ids of dense indices (distinct for distinct indices with overwhelming probability)."""
    mixed = splitmix64(np.uint64(seed) * np.uint64(0x9E37_79B9) + salt, np.asarray(index, dtype=np.uint64))
    return (mixed & _ID_MASK).astype(np.int64)


@dataclass
class _Items:
    index: np.ndarray  # global item index (creation order)
    created_ts: np.ndarray
    expires_ts: np.ndarray
    popularity: np.ndarray
    quality: np.ndarray
    factors: np.ndarray


class SyntheticLogWorld:
    """The world's state on one day; :meth:`day_parts` yields that day's rows part by part."""

    def __init__(self, cfg: WorldConfig, schema: LogSchema | None = None) -> None:
        self.cfg = cfg
        self.schema = schema or LogSchema()
        if set(self.schema.labels) != set(DEFAULT_LABELS) or self.schema.negative != "skip":
            raise ValueError(f"the generator writes the labels {list(DEFAULT_LABELS)} (negative: skip)")
        rng = np.random.default_rng([cfg.seed, _TAG_USERS])
        self.user_weight = rng.lognormal(0.0, cfg.activeness_sigma, cfg.num_users)
        self.user_cdf = np.cumsum(self.user_weight) / self.user_weight.sum()
        self.user_bias = rng.normal(0.0, 0.3, cfg.num_users)
        self.user_factors = rng.normal(0.0, 1.0, (cfg.num_users, cfg.factor_dim))
        self.user_ids = raw_ids(np.arange(cfg.num_users), _USER_ID_SALT, cfg.seed)
        self.day_index = 0

    def advance(self) -> None:
        """Move to the next day: users' tastes drift one AR(1) step."""
        self.day_index += 1
        rho = self.cfg.drift_rho
        eps = np.random.default_rng([self.cfg.seed, _TAG_DRIFT, self.day_index]).normal(
            0.0, 1.0, self.user_factors.shape
        )
        self.user_factors = rho * self.user_factors + math.sqrt(1.0 - rho * rho) * eps

    @property
    def day(self) -> dt.date:
        return self.cfg.start_day + dt.timedelta(days=self.day_index)

    def _items_created(self, d: int) -> _Items:
        cfg = self.cfg
        n = cfg.new_items_per_day
        rng = np.random.default_rng([cfg.seed, _TAG_ITEMS, d + _DAY_OFFSET])
        lo = day_start_ts(cfg.start_day + dt.timedelta(days=d))
        created = lo + np.sort(rng.integers(0, SECONDS_PER_DAY, n))
        sigma = 0.8
        life_days = rng.lognormal(math.log(cfg.mean_lifespan_days) - sigma * sigma / 2, sigma, n)
        life_days = np.clip(life_days, 1.0, cfg.max_lifespan_days)
        return _Items(
            index=(d + _DAY_OFFSET) * n + np.arange(n, dtype=np.int64),
            created_ts=created,
            expires_ts=created + (life_days * SECONDS_PER_DAY).astype(np.int64),
            popularity=rng.pareto(cfg.popularity_alpha, n) + 1.0,
            quality=rng.normal(0.0, 0.5, n),
            factors=rng.normal(0.0, 1.0, (n, cfg.factor_dim)),
        )

    def _alive_pool(self) -> _Items:
        """Items created in the window of days that can still be alive today (day 0 also has a back catalogue)."""
        d0 = self.day_index - self.cfg.max_lifespan_days
        batches = [self._items_created(d) for d in range(d0, self.day_index + 1)]
        return _Items(*(np.concatenate([getattr(b, f) for b in batches]) for f in _Items.__dataclass_fields__))

    def day_parts(self) -> Iterator[dict[str, np.ndarray]]:
        """The rows of the current day, one dict of numpy columns per part, time-sorted."""
        cfg = self.cfg
        pool = self._alive_pool()
        lo = day_start_ts(self.day)
        edges = np.linspace(0, SECONDS_PER_DAY, cfg.parts_per_day + 1).astype(np.int64) + lo
        counts = np.diff(np.linspace(0, cfg.events_per_day, cfg.parts_per_day + 1).astype(np.int64))
        for p in range(cfg.parts_per_day):
            rng = np.random.default_rng([cfg.seed, _TAG_EVENTS, self.day_index, p])
            start, end = int(edges[p]), int(edges[p + 1])
            # Items shown in this part: alive at its start (created before it, expiring after it).
            alive = np.flatnonzero((pool.created_ts < start) & (pool.expires_ts > start))
            if alive.size == 0:
                raise RuntimeError(f"no item alive on {self.day} at {start}: raise new_items_per_day")
            n = int(counts[p])
            ts = np.sort(rng.integers(start, end, n))
            users = np.searchsorted(self.user_cdf, rng.random(n), side="right").clip(0, cfg.num_users - 1)
            item_cdf = np.cumsum(pool.popularity[alive])
            items = alive[np.searchsorted(item_cdf, rng.random(n) * item_cdf[-1], side="right").clip(0, alive.size - 1)]
            affinity = np.einsum("nk,nk->n", self.user_factors[users], pool.factors[items]) / math.sqrt(cfg.factor_dim)
            affinity = cfg.affinity_scale * affinity + pool.quality[items] + self.user_bias[users]
            labels = _engagements(rng, affinity)
            yield {
                "user_id": self.user_ids[users],
                "item_id": raw_ids(pool.index[items], _ITEM_ID_SALT, cfg.seed),
                "ts": ts,
                "item_created_ts": pool.created_ts[items],
                **labels,
            }


def _engagements(rng: np.random.Generator, affinity: np.ndarray) -> dict[str, np.ndarray]:
    def bernoulli(base: float, weight: float) -> np.ndarray:
        return rng.random(affinity.size) < 1.0 / (1.0 + np.exp(-(base + weight * affinity)))

    name, base, weight = _CLICK
    click = bernoulli(base, weight)
    out = {"skip": (~click).astype(np.int8), name: click.astype(np.int8)}
    for name, base, weight in _AFTER_CLICK:
        out[name] = (click & bernoulli(base, weight)).astype(np.int8)
    return out


def generate_logs(
    out: str | Path, days: int, cfg: WorldConfig, *, skip_existing: bool = True, progress: bool = False
) -> list[dt.date]:
    """Write ``days`` days of the world under ``out`` (:mod:`framework.data.logs.schema` layout); returns them.

    Days already present are kept (``skip_existing``) but the world still steps through them, so the result is
    the same as generating everything at once.
    """
    from tqdm import tqdm

    world = SyntheticLogWorld(cfg)
    written = []
    bar = tqdm(total=days, desc="gen-logs", unit="day", disable=not progress)
    for d in range(days):
        if d:
            world.advance()
        target = Path(out) / f"day={world.day.isoformat()}"
        if not (skip_existing and (target / "_SUCCESS").is_file()):
            write_day(out, world.day, world.day_parts(), world.schema, row_group_rows=cfg.row_group_rows)
        written.append(world.day)
        bar.update()
    bar.close()
    return written
