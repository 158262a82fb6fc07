"""Vectorized reservoir sampling: exact Algorithm R semantics and uniformity."""

import numpy as np
import pytest

from framework.data.ranking.hashing import stream_keys
from framework.data.ranking.sampling import reservoir_sample, reservoir_sample_keyed, reservoir_sample_many


def _algorithm_r(n: int, k: int, r_draws: np.ndarray) -> list[int]:
    """Textbook sequential Algorithm R driven by given draws r_j ~ U{0..j}, j = k..n-1."""
    reservoir = list(range(k))
    for j in range(k, n):
        r = int(r_draws[j - k])
        if r < k:
            reservoir[r] = j
    return sorted(reservoir)


@pytest.mark.parametrize(("n", "k"), [(2, 1), (10, 3), (11, 10), (1000, 7), (5000, 512), (64, 1)])
def test_matches_sequential_algorithm_r_on_same_stream(n: int, k: int) -> None:
    for seed in range(5):
        fast = reservoir_sample(n, k, np.random.default_rng(seed))
        # Same stream: the sampler makes exactly one integers() call with highs j + 1.
        r_draws = np.random.default_rng(seed).integers(0, np.arange(k, n) + 1)
        assert fast.tolist() == _algorithm_r(n, k, r_draws)


def test_many_matches_sequential_algorithm_r_per_stream() -> None:
    ns = np.array([9, 40, 6, 100], dtype=np.int64)
    k = 5
    fast_SK = reservoir_sample_many(ns, k, np.random.default_rng(7))
    highs = np.concatenate([np.arange(k, n) + 1 for n in ns])
    r_draws = np.random.default_rng(7).integers(0, highs)
    bounds = np.concatenate([[0], np.cumsum(ns - k)])
    for s, n in enumerate(ns):
        assert fast_SK[s].tolist() == _algorithm_r(int(n), k, r_draws[bounds[s] : bounds[s + 1]])


def test_small_streams_and_validation() -> None:
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(reservoir_sample(3, 5, rng), [0, 1, 2])
    np.testing.assert_array_equal(reservoir_sample(5, 5, rng), np.arange(5))
    assert reservoir_sample(0, 0, rng).size == 0
    assert reservoir_sample(4, 0, rng).size == 0
    assert reservoir_sample(4, 2, rng).dtype == np.int64
    with pytest.raises(ValueError, match="n >= 0"):
        reservoir_sample(-1, 2, rng)
    with pytest.raises(ValueError, match="exceed k"):
        reservoir_sample_many(np.array([10, 3]), 3, rng)
    with pytest.raises(ValueError, match="k must be >= 1"):
        reservoir_sample_many(np.array([10]), 0, rng)
    assert reservoir_sample_many(np.empty(0, np.int64), 3, rng).shape == (0, 3)


def test_draws_are_distinct_sorted_and_in_range() -> None:
    rng = np.random.default_rng(1)
    for n in (6, 50, 3000):
        for _ in range(200):
            idx = reservoir_sample(n, 5, rng)
            assert idx.size == 5
            assert np.all(np.diff(idx) > 0)
            assert idx[0] >= 0 and idx[-1] < n


def test_inclusion_probability_is_k_over_n() -> None:
    n, k, draws = 20, 5, 40_000
    rng = np.random.default_rng(12345)
    samples_DK = reservoir_sample_many(np.full(draws, n), k, rng)
    # Every draw is a k-subset.
    assert np.all(np.diff(samples_DK, axis=1) > 0)
    counts = np.bincount(samples_DK.ravel(), minlength=n)
    p = k / n
    sd = np.sqrt(draws * p * (1 - p))
    # 5-sigma binomial bound per index (fixed seed, so this is deterministic anyway).
    assert np.all(np.abs(counts - draws * p) < 5 * sd), counts
    # The first k items (pre-filled slots) and the last one (a single late draw) are the
    # classic places a broken reservoir gets wrong; they are covered above, and the
    # pairwise inclusion k(k-1)/(n(n-1)) checks that samples are uniform subsets.
    both = np.mean(np.any(samples_DK == 0, axis=1) & np.any(samples_DK == n - 1, axis=1))
    p_pair = k * (k - 1) / (n * (n - 1))
    assert abs(both - p_pair) < 5 * np.sqrt(p_pair * (1 - p_pair) / draws)


def test_single_stream_sampler_is_uniform_too() -> None:
    n, k, draws = 12, 3, 6000
    rng = np.random.default_rng(99)
    counts = np.zeros(n, dtype=np.int64)
    for _ in range(draws):
        counts[reservoir_sample(n, k, rng)] += 1
    p = k / n
    assert np.all(np.abs(counts - draws * p) < 5 * np.sqrt(draws * p * (1 - p))), counts


def test_keyed_sampler_is_uniform() -> None:
    n, k, draws = 20, 5, 40_000
    keys = stream_keys(7, np.arange(draws))
    samples_DK = reservoir_sample_keyed(np.full(draws, n), k, keys)
    assert np.all(np.diff(samples_DK, axis=1) > 0) and samples_DK.min() >= 0 and samples_DK.max() < n
    counts = np.bincount(samples_DK.ravel(), minlength=n)
    p = k / n
    assert np.all(np.abs(counts - draws * p) < 5 * np.sqrt(draws * p * (1 - p))), counts
    both = np.mean(np.any(samples_DK == 0, axis=1) & np.any(samples_DK == n - 1, axis=1))
    p_pair = k * (k - 1) / (n * (n - 1))
    assert abs(both - p_pair) < 5 * np.sqrt(p_pair * (1 - p_pair) / draws)


def test_keyed_sample_depends_on_its_key_only() -> None:
    ns = np.array([30, 9, 400, 12, 50], dtype=np.int64)
    keys = stream_keys(3, np.arange(ns.size))
    together = reservoir_sample_keyed(ns, 8, keys)
    for s in range(ns.size):  # alone, and in another order, each stream draws the same sample
        np.testing.assert_array_equal(reservoir_sample_keyed(ns[[s]], 8, keys[[s]])[0], together[s])
    order = np.array([4, 2, 0, 3, 1])
    np.testing.assert_array_equal(reservoir_sample_keyed(ns[order], 8, keys[order]), together[order])
    other = reservoir_sample_keyed(ns, 8, stream_keys(4, np.arange(ns.size)))
    assert not np.array_equal(other, together)
    with pytest.raises(ValueError, match="one entry per stream"):
        reservoir_sample_keyed(ns, 8, keys[:2])


def test_stream_keys_separate_every_part() -> None:
    base = stream_keys(0, 1, 2, np.arange(1000))
    assert np.unique(base).size == 1000
    for other in (stream_keys(1, 1, 2, np.arange(1000)), stream_keys(0, 2, 2, np.arange(1000)),
                  stream_keys(0, 1, 3, np.arange(1000))):  # fmt: skip
        assert not np.intersect1d(base, other).size
