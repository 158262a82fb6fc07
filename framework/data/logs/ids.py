"""The id space of a table across days: an exact vocabulary that grows, or a fixed hash space.

* ``grow``: every raw id seen in training gets the next row, in order of first appearance, and keeps it for good;
  row 0 is reserved for ids not seen in training yet (an evaluation row's brand-new item, say). The vocabulary is
  saved with each day's checkpoint; the table has ``1 + len(vocabulary)`` rows, so it grows as new ids arrive
  (the trainer appends rows and keeps the old ones with their optimizer state).
* ``hash``: ``hash_size`` rows for ever; a raw id's row is its salted splitmix64 hash. The vocabulary is still kept,
  only to report how many distinct ids share rows (the collision rate, which for an ever-growing item set rises
  with the days).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from framework.data.ranking.hashing import TABLE_SALTS, collision_stats, hash_ids

IdMode = Literal["grow", "hash"]


class IdIndex:
    """Raw int64 id -> dense index in order of first appearance (sorted keys + searchsorted; grows, never moves)."""

    def __init__(self, ids_in_order: np.ndarray | None = None) -> None:
        ids = np.empty(0, np.int64) if ids_in_order is None else np.asarray(ids_in_order, np.int64)
        self.ids = ids  # dense index -> raw id
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def __len__(self) -> int:
        return int(self.ids.size)

    def lookup(self, raw: np.ndarray) -> np.ndarray:
        """Dense indices of ``raw`` (-1 for ids never added)."""
        raw = np.asarray(raw, np.int64)
        if not len(self):
            return np.full(raw.shape, -1, np.int64)
        pos = np.searchsorted(self._sorted, raw).clip(0, len(self) - 1)
        return np.where(self._sorted[pos] == raw, self._order[pos], -1)

    def add(self, raw: np.ndarray) -> np.ndarray:
        """Dense indices of ``raw``, adding unseen ids (in order of first appearance in ``raw``)."""
        raw = np.asarray(raw, np.int64)
        idx = self.lookup(raw)
        missing = idx < 0
        if missing.any():
            new, first = np.unique(raw[missing], return_index=True)
            new = new[np.argsort(first, kind="stable")]
            self.ids = np.concatenate([self.ids, new])
            self._order = np.argsort(self.ids, kind="stable")
            self._sorted = self.ids[self._order]
            idx = self.lookup(raw)
        return idx


@dataclass(frozen=True)
class IdStats:
    table: str
    mode: str
    distinct_ids: int
    """Distinct raw ids seen in training so far."""
    rows: int
    """Rows of the table (allocated)."""
    rows_in_use: int
    """Rows holding at least one seen id (grow: all but row 0)."""
    collision_rate: float
    """Share of seen ids whose row holds another seen id (0 for grow)."""


class TableIds:
    def __init__(self, table: str, mode: IdMode, hash_size: int | None = None) -> None:
        if mode not in ("grow", "hash"):
            raise ValueError(f"id mode for table {table!r} must be 'grow' or 'hash', got {mode!r}")
        if mode == "hash" and (hash_size is None or hash_size < 1):
            raise ValueError(f"table {table!r}: mode=hash needs a hash_size >= 1, got {hash_size!r}")
        self.table, self.mode, self.hash_size = table, mode, hash_size
        self.salt = TABLE_SALTS.get(table, 0)
        self.vocab = IdIndex()

    def observe(self, raw: np.ndarray) -> None:
        """Add the training ids of a day (in order) to the vocabulary."""
        self.vocab.add(np.asarray(raw, np.int64))

    @property
    def num_embeddings(self) -> int:
        return 1 + len(self.vocab) if self.mode == "grow" else int(self.hash_size)  # type: ignore[arg-type]

    def rows(self, raw: np.ndarray) -> np.ndarray:
        """Embedding rows of raw ids (grow: 0 for ids not in the vocabulary)."""
        raw = np.asarray(raw, np.int64)
        if self.mode == "hash":
            return hash_ids(raw, int(self.hash_size), self.salt)  # type: ignore[arg-type]
        return self.vocab.lookup(raw) + 1

    def stats(self) -> IdStats:
        n = len(self.vocab)
        if self.mode == "grow":
            return IdStats(self.table, self.mode, n, n + 1, n, 0.0)
        s = collision_stats(self.table, self.vocab.ids, self.hash_size, self.salt)
        return IdStats(self.table, self.mode, n, int(self.hash_size), s.rows_used, s.collision_rate)  # type: ignore[arg-type]

    def save(self, path: str | Path) -> None:
        np.save(Path(path), self.vocab.ids)

    def load(self, path: str | Path) -> None:
        self.vocab = IdIndex(np.load(Path(path), allow_pickle=False))
