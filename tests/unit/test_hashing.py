"""Parameter hashing, collision accounting and id mappers."""

import numpy as np
import pytest

from framework.data.ranking.hashing import CollisionStats, IdMapper, collision_stats, hash_ids

_M64 = (1 << 64) - 1


def _splitmix64_reference(x: int, salt: int, hash_size: int) -> int:
    """Pure-Python splitmix64 finalizer with explicit 64-bit wraparound."""
    z = (x + (salt + 1) * 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return z % hash_size


def test_matches_pure_python_reference_including_wraparound() -> None:
    ids = np.array([0, 1, 2, 12345, 2**62 + 7, -1, -(2**63)], dtype=np.int64)
    for salt in (0, 1, 0x5EED):
        for hash_size in (1, 7, 1 << 20, (1 << 63) - 1):
            got = hash_ids(ids, hash_size, salt)
            want = [_splitmix64_reference(int(x) & _M64, salt, hash_size) for x in ids]
            assert got.tolist() == want


def test_range_dtype_shape_and_determinism() -> None:
    ids_NM = np.random.default_rng(0).integers(-(2**40), 2**40, size=(50, 40))
    rows = hash_ids(ids_NM, 1000, salt=3)
    assert rows.dtype == np.int64 and rows.shape == (50, 40)
    assert rows.min() >= 0 and rows.max() < 1000
    np.testing.assert_array_equal(rows, hash_ids(ids_NM.copy(), 1000, salt=3))
    with pytest.raises(ValueError, match="hash_size"):
        hash_ids(ids_NM, 0)


def test_salt_changes_mapping() -> None:
    ids = np.arange(20_000)
    same = np.mean(hash_ids(ids, 1 << 16, salt=1) == hash_ids(ids, 1 << 16, salt=2))
    assert same < 0.01  # unrelated tables agree only by chance (~1/65536)


def test_consecutive_ids_spread_evenly() -> None:
    counts = np.bincount(hash_ids(np.arange(100_000), 100), minlength=100)
    # Binomial(100000, 0.01) has sd ~31.5. Identity-modulo would pass the balance check on sequential
    # ids, so the second assert rules it out explicitly.
    assert np.all(np.abs(counts - 1000) < 5 * 31.5)
    assert np.mean(hash_ids(np.arange(1000), 100) == np.arange(1000) % 100) < 0.05


def test_hand_computed_collision_accounting() -> None:
    candidates = np.arange(2000)
    rows = hash_ids(candidates, 8, salt=0)
    by_row = {r: candidates[rows == r] for r in range(8)}
    # Row 0 gets three ids, row 1 two ids, row 2 one id: 6 distinct ids in 3 rows, and the
    # 5 ids of rows 0 and 1 share their row with another id.
    chosen = np.concatenate([by_row[0][:3], by_row[1][:2], by_row[2][:1]])
    with_repeats = np.concatenate([chosen, chosen[:4], chosen[:1]])  # repeats are not new ids
    stats = collision_stats("item", with_repeats, 8)
    assert stats == CollisionStats(table="item", distinct_ids=6, rows_used=3, ids_sharing_row=5, collision_rate=5 / 6)
    # A single id per row never counts as a collision.
    lonely = np.array([by_row[r][0] for r in range(8)])
    assert collision_stats("item", lonely, 8).ids_sharing_row == 0
    assert collision_stats("item", np.empty(0, np.int64), 8).collision_rate == 0.0
    exact = collision_stats("user", with_repeats, None)
    assert (exact.distinct_ids, exact.rows_used, exact.collision_rate) == (6, 6, 0.0)


def test_collision_rate_matches_birthday_expectation() -> None:
    n, m = 2000, 8192
    # An id shares its row unless the other n-1 ids all miss it.
    expected = 1 - (1 - 1 / m) ** (n - 1)
    ids = np.random.default_rng(5).choice(10**12, size=n, replace=False)
    rates = [collision_stats("t", ids, m, salt=s).collision_rate for s in range(5)]
    assert abs(np.mean(rates) - expected) < 0.02, (rates, expected)


def test_exact_vocabulary_mapper() -> None:
    mapper = IdMapper("user", np.array([50, 10, 30, 10, 50]), hash_size=None)
    assert not mapper.is_hashed
    assert mapper.num_embeddings == 3
    np.testing.assert_array_equal(mapper(np.array([10, 30, 50, 50])), [0, 1, 2, 2])
    assert mapper(np.array([[30], [10]])).shape == (2, 1)
    with pytest.raises(KeyError, match="'user'"):
        mapper(np.array([10, 20]))
    with pytest.raises(KeyError, match="'user'"):
        mapper(np.array([99]))  # beyond the largest id
    assert mapper.collision_stats().collision_rate == 0.0
    assert IdMapper("user", np.empty(0, np.int64), None).num_embeddings == 1


def test_hashed_mapper() -> None:
    mapper = IdMapper("item", np.arange(100), hash_size=64, salt=9)
    assert mapper.is_hashed and mapper.num_embeddings == 64
    unseen = np.array([10**15, -3])
    np.testing.assert_array_equal(mapper(unseen), hash_ids(unseen, 64, 9))
    stats = mapper.collision_stats()
    assert stats.table == "item" and stats.distinct_ids == 100 and stats.rows_used <= 64
    with pytest.raises(ValueError, match="'item'"):
        IdMapper("item", np.arange(3), hash_size=0)
