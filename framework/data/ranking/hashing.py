"""Raw-id to embedding-row mapping: parameter hashing or exact vocabularies.

Hashing bounds the table size independently of the id space (the "parameter
hashing" of large ranking models) at the cost of collisions; ``collision_stats``
quantifies that cost so it can be logged next to model quality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TABLE_SALTS: dict[str, int] = {"item": 0x5EED_17E3, "user": 0x5EED_05E4}
"""Fixed per-table salts: the same raw id lands in unrelated rows of different tables, and the mapping does not
depend on any data seed (checkpoints stay portable)."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def hash_ids(ids: np.ndarray, hash_size: int, salt: int = 0) -> np.ndarray:
    """Maps int64 ids to [0, hash_size) with the splitmix64 finalizer.

    The salt is folded in before mixing so that different tables (different
    salts) place the same raw id in unrelated rows, which keeps collisions of
    one table uncorrelated with those of another.

    Args:
        ids: integer array of any shape (negative ids are fine).
        hash_size: number of rows, >= 1.
        salt: per-table salt.

    Returns:
        int64 array of the same shape with values in [0, hash_size).

    Raises:
        ValueError: if hash_size < 1.
    """
    if hash_size < 1:
        raise ValueError(f"hash_size must be >= 1, got {hash_size}")
    x = np.asarray(ids).astype(np.int64, copy=False).view(np.uint64)
    return (splitmix64(x, np.uint64(salt & 0xFFFFFFFFFFFFFFFF) + np.uint64(1)) % np.uint64(hash_size)).astype(np.int64)


def splitmix64(state: np.ndarray, counter: np.ndarray | np.uint64) -> np.ndarray:
    """The ``counter``-th output of the splitmix64 generator started at ``state`` (elementwise, uint64).

    A counter-based generator: output ``n`` of the stream ``state`` is a pure function of (state, n), so any
    element of any stream is computed directly, in any order and on any rank, with no generator state to carry.
    """
    state = np.asarray(state, dtype=np.uint64)
    counter = np.asarray(counter, dtype=np.uint64)
    # uint64 arithmetic wraps modulo 2**64, which is what splitmix64 relies on.
    with np.errstate(over="ignore"):
        z = state + counter * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def stream_keys(*parts: int | np.ndarray) -> np.ndarray:
    """uint64 keys that identify random streams by a tuple of integers (scalars or arrays, broadcast).

    Distinct tuples give unrelated keys (each part is folded in through a splitmix64 step), e.g.
    ``stream_keys(seed, purpose, epoch, example_index_N)`` names one stream per example.
    """
    key = np.zeros((), dtype=np.uint64)
    for part in parts:
        x = np.asarray(part).astype(np.int64, copy=False).view(np.uint64)
        key = splitmix64(key ^ x, np.uint64(1))
    return key


@dataclass
class CollisionStats:
    """How much a hashed table merges distinct ids.

    Attributes:
        table: table name.
        distinct_ids: number of distinct raw ids.
        rows_used: number of rows holding at least one id.
        ids_sharing_row: distinct ids whose row also holds at least one other
            distinct id.
        collision_rate: ids_sharing_row / distinct_ids (0 when there are no ids).
    """

    table: str
    distinct_ids: int
    rows_used: int
    ids_sharing_row: int
    collision_rate: float


def collision_stats(table: str, raw_ids: np.ndarray, hash_size: int | None, salt: int = 0) -> CollisionStats:
    """Counts collisions of ``raw_ids`` (repeats allowed) under ``hash_ids``.

    Args:
        table: table name for the report.
        raw_ids: raw ids; duplicates are counted once.
        hash_size: rows in the table, or None for an exact vocabulary (no collisions).
        salt: the salt the table hashes with.

    Returns:
        The collision statistics.
    """
    distinct = np.unique(np.asarray(raw_ids, dtype=np.int64))
    if hash_size is None:
        n = int(distinct.size)
        return CollisionStats(table, n, n, 0, 0.0)
    _, counts = np.unique(hash_ids(distinct, hash_size, salt), return_counts=True)
    sharing = int(counts[counts > 1].sum())
    n = int(distinct.size)
    return CollisionStats(
        table=table,
        distinct_ids=n,
        rows_used=int(counts.size),
        ids_sharing_row=sharing,
        collision_rate=sharing / n if n else 0.0,
    )


class IdMapper:
    """Maps raw ids of one table to embedding rows.

    With ``hash_size`` set, ids are hashed (any id is accepted). With
    ``hash_size=None``, the sorted distinct ids seen at build time are densely
    remapped to 0..V-1 and unseen ids are rejected.
    """

    def __init__(self, table: str, raw_ids: np.ndarray, hash_size: int | None, salt: int = 0):
        """Builds the mapper.

        Args:
            table: table name (used in errors and stats).
            raw_ids: the raw ids of the data; defines the vocabulary when exact and
                is kept for collision statistics in both modes.
            hash_size: rows of a hashed table, or None for an exact vocabulary.
            salt: hashing salt; give every table its own.

        Raises:
            ValueError: if hash_size is not None and < 1.
        """
        if hash_size is not None and (not isinstance(hash_size, int | np.integer) or hash_size < 1):
            raise ValueError(f"hash_size for table {table!r} must be a positive int or None, got {hash_size!r}")
        self.table = table
        self.hash_size = None if hash_size is None else int(hash_size)
        self.salt = salt
        self.vocab = np.unique(np.asarray(raw_ids, dtype=np.int64))

    @property
    def is_hashed(self) -> bool:
        """Whether ids are hashed rather than looked up in a vocabulary."""
        return self.hash_size is not None

    @property
    def num_embeddings(self) -> int:
        """Rows the embedding table needs (at least 1, so an empty vocab is still a valid table)."""
        if self.hash_size is not None:
            return self.hash_size
        return max(1, int(self.vocab.size))

    def __call__(self, raw_ids: np.ndarray) -> np.ndarray:
        """Maps raw ids to rows.

        Args:
            raw_ids: integer array of any shape.

        Returns:
            int64 rows of the same shape.

        Raises:
            KeyError: for ids outside an exact vocabulary, naming the table.
        """
        ids = np.asarray(raw_ids, dtype=np.int64)
        if self.hash_size is not None:
            return hash_ids(ids, self.hash_size, self.salt)
        ids_flat = ids.reshape(-1)
        rows = np.searchsorted(self.vocab, ids_flat)
        found = rows < self.vocab.size
        found[found] = self.vocab[rows[found]] == ids_flat[found]
        if not found.all():
            missing = np.unique(ids_flat[~found])
            raise KeyError(
                f"table {self.table!r}: {missing.size} raw id(s) not in the vocabulary (first: {missing[:5].tolist()})"
            )
        return rows.astype(np.int64, copy=False).reshape(ids.shape)

    def collision_stats(self) -> CollisionStats:
        """Collision statistics over the ids seen at build time."""
        return collision_stats(self.table, self.vocab, self.hash_size, self.salt)
