"""Vectorized reservoir sampling (Algorithm R) for UC-Sampling.

Algorithm R streams items 0..n-1, keeps the first k, and lets item j (j >= k)
replace slot r_j ~ U{0..j} when r_j < k. Because j only increases, the final
content of a slot is the largest j that hit it, so the whole stream can be
evaluated with one vectorized draw plus ``np.maximum.at``: no Python loop over
the stream, and the result is exactly what the sequential algorithm produces
from the same draws.

:func:`reservoir_sample_keyed` draws stream s's ``r_j`` as output j of a counter-based generator keyed by
``keys[s]`` (:func:`~framework.data.ranking.hashing.splitmix64`): a stream's sample depends on its key alone, not on
which other streams share the call or in what order, so e.g. an example's UC-Sampling draw is the same whatever
rank or batch builds it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from framework.data.ranking.hashing import splitmix64

# Caps the temporary draw arrays of reservoir_sample_many (int64 elements): long lists
# in a batch are processed in groups so memory stays bounded on ml-20m-sized items.
_MAX_DRAWS_PER_CHUNK = 1 << 23


def reservoir_sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Returns a uniform random k-subset of range(n) drawn by Algorithm R.

    Args:
        n: stream length.
        k: reservoir size.
        rng: source of randomness; consumes one ``integers`` call of n - k draws.

    Returns:
        int64 [min(n, k)] sorted, distinct indices.

    Raises:
        ValueError: if n or k is negative.
    """
    if n < 0 or k < 0:
        raise ValueError(f"reservoir_sample needs n >= 0 and k >= 0, got n={n}, k={k}")
    if n <= k:
        return np.arange(n, dtype=np.int64)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    return reservoir_sample_many(np.array([n], dtype=np.int64), k, rng)[0]


def reservoir_sample_many(ns: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Runs an independent Algorithm R reservoir for each stream length in ``ns``.

    All streams must be longer than k (shorter ones need no sampling). The
    draws for all streams are made in stream order with one ``integers`` call per
    chunk, so the result is deterministic given the generator state.

    Args:
        ns: int64 [S] stream lengths, each > k.
        k: reservoir size, > 0.
        rng: source of randomness.

    Returns:
        int64 [S, k]: row s holds the sorted sampled indices of stream s.

    Raises:
        ValueError: if k < 1 or some stream is not longer than k.
    """
    return _reservoir(ns, k, lambda j_D, _stream_D: rng.integers(0, j_D + 1))


def reservoir_sample_keyed(ns: np.ndarray, k: int, keys: np.ndarray) -> np.ndarray:
    """Like :func:`reservoir_sample_many`, with stream s's draws a pure function of ``keys[s]``.

    Draw ``r_j`` of stream s is ``splitmix64(keys[s], j) mod (j + 1)``: uniform on {0..j} up to a bias below
    ``j / 2**64``. The same key always gives the same sample, independently of the other streams.

    Args:
        ns: int64 [S] stream lengths, each > k.
        k: reservoir size, > 0.
        keys: uint64 [S] stream keys (e.g. :func:`~framework.data.ranking.hashing.stream_keys` of the example).

    Returns:
        int64 [S, k]: row s holds the sorted sampled indices of stream s.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    if keys.shape != np.shape(ns):
        raise ValueError(f"keys must have one entry per stream: shape {keys.shape} vs ns {np.shape(ns)}")

    def draw(j_D: np.ndarray, stream_D: np.ndarray) -> np.ndarray:
        z_D = splitmix64(keys[stream_D], j_D.astype(np.uint64))
        return (z_D % (j_D + 1).astype(np.uint64)).astype(np.int64)

    return _reservoir(ns, k, draw)


_Draw = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(j per draw, stream of each draw) -> r per draw, uniform in [0, j]; draws come in stream order."""


def _reservoir(ns: np.ndarray, k: int, draw: _Draw) -> np.ndarray:
    ns = np.asarray(ns, dtype=np.int64)
    if k < 1:
        raise ValueError(f"reservoir size k must be >= 1, got {k}")
    if ns.ndim != 1:
        raise ValueError(f"ns must be 1-D, got shape {ns.shape}")
    if ns.size and ns.min() <= k:
        raise ValueError(f"every stream length must exceed k={k}, got min {int(ns.min())}")
    out_SK = np.empty((ns.shape[0], k), dtype=np.int64)
    start = 0
    while start < ns.shape[0]:
        # Greedy chunking by the number of draws (n - k per stream); at least one stream per chunk.
        draws = np.cumsum(ns[start:] - k)
        stop = start + max(1, int(np.searchsorted(draws, _MAX_DRAWS_PER_CHUNK, side="right")))
        out_SK[start:stop] = _reservoir_chunk(ns[start:stop], k, start, draw)
        start = stop
    return out_SK


def _reservoir_chunk(ns: np.ndarray, k: int, first_stream: int, draw: _Draw) -> np.ndarray:
    num_streams = ns.shape[0]
    draws_S = ns - k
    total = int(draws_S.sum())
    stream_D = np.repeat(np.arange(num_streams, dtype=np.int64), draws_S)
    first_D = np.repeat(np.cumsum(draws_S) - draws_S, draws_S)
    # j runs k..n_s-1 within each stream.
    j_D = np.arange(total, dtype=np.int64) - first_D + k
    r_D = draw(j_D, stream_D + first_stream)
    hit = r_D < k
    slots_SK = np.tile(np.arange(k, dtype=np.int64), (num_streams, 1))
    # Later j wins a slot, and j grows along the stream, so "last writer" == maximum.
    np.maximum.at(slots_SK.reshape(-1), stream_D[hit] * k + r_D[hit], j_D[hit])
    slots_SK.sort(axis=1)
    return slots_SK
