"""History state of the daily featurizer, checked against a brute-force reference of "events strictly before"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from framework.data.logs.history import HistoryConfig, HistoryState, aligned_chunks
from framework.data.logs.ids import IdIndex

CHANNEL = "click"
POSITIVES = ("click",)


def make_log(n: int, users: int, items: int, seed: int, t0: int = 1_000_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = t0 + np.sort(rng.integers(0, n // 2, n))  # many equal timestamps
    return {
        "user_id": 10_000 + rng.integers(0, users, n) * 7,
        "item_id": 50_000 + rng.integers(0, items, n) * 3,
        "ts": ts,
        "click": (rng.random(n) < 0.4).astype(np.int8),
    }


def featurize(state: HistoryState, log: dict[str, np.ndarray], chunk: int, day: int = 0) -> list[dict]:
    n = log["ts"].size
    pieces = (({c: v[a : a + 5] for c, v in log.items()}, np.arange(a, min(a + 5, n))) for a in range(0, n, 5))
    return [state.featurize(cols, pos, day, k) for k, (cols, pos) in enumerate(aligned_chunks(pieces, chunk))]


def rows_of(chunks: list[dict], feature: str) -> list[tuple[np.ndarray, np.ndarray]]:
    rows = []
    for ch in chunks:
        lists = ch[f"{feature}/{CHANNEL}"]
        for e in range(lists.offsets.size - 1):
            a, b = lists.offsets[e], lists.offsets[e + 1]
            rows.append((lists.values[a:b], lists.ts[a:b]))
    return rows


def reference_earlier(log: dict[str, np.ndarray], e: int, owner: str, member: str) -> tuple[np.ndarray, np.ndarray]:
    """All positives on row e's owner strictly before its time, oldest first (ties: log order)."""
    ts = log["ts"]
    mask = (log[owner] == log[owner][e]) & (ts < ts[e]) & (log["click"] == 1)
    return log[member][mask], ts[mask]


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_item_lists_are_the_last_n_positives_strictly_before(chunk: int) -> None:
    log = make_log(600, users=12, items=30, seed=1)
    cfg = HistoryConfig(max_item_hist=5, max_user_hist=4, item_reservoir=8, chunk_rows=chunk)
    rows = rows_of(featurize(HistoryState(cfg, POSITIVES), log, chunk), "item_hist")
    for e, (items, ts) in enumerate(rows):
        ref_items, ref_ts = reference_earlier(log, e, "user_id", "item_id")
        np.testing.assert_array_equal(items, ref_items[-5:], err_msg=f"row {e}")
        np.testing.assert_array_equal(ts, ref_ts[-5:])
        assert (ts < log["ts"][e]).all()


@pytest.mark.parametrize("chunk", [1, 9, 10_000])
def test_user_lists_are_exact_below_m_and_a_subset_of_earlier_positives_above(chunk: int) -> None:
    log = make_log(800, users=40, items=10, seed=2)
    cfg = HistoryConfig(max_item_hist=4, max_user_hist=6, item_reservoir=12, chunk_rows=chunk)
    rows = rows_of(featurize(HistoryState(cfg, POSITIVES), log, chunk), "user_hist")
    sampled = 0
    for e, (users, ts) in enumerate(rows):
        ref_users, ref_ts = reference_earlier(log, e, "item_id", "user_id")
        assert (np.diff(ts) >= 0).all() and (ts < log["ts"][e]).all()
        if ref_users.size <= 6:
            got = sorted(zip(ts.tolist(), users.tolist(), strict=True))
            assert got == sorted(zip(ref_ts.tolist(), ref_users.tolist(), strict=True)), f"row {e}"
        else:
            sampled += 1
            assert users.size == 6
            pool = set(zip(ref_ts.tolist(), ref_users.tolist(), strict=True))
            assert set(zip(ts.tolist(), users.tolist(), strict=True)) <= pool
    assert sampled > 400  # most rows had to sample


def _draw_frequencies(num_seeds: int, stored: int, in_chunk: int, m: int, r: int) -> np.ndarray:
    """How often each of the ``stored + in_chunk`` earlier positive users of one item is drawn for a query row."""
    counts = np.zeros(stored + in_chunk)
    for seed in range(num_seeds):
        cfg = HistoryConfig(max_item_hist=2, max_user_hist=m, item_reservoir=r, chunk_rows=10_000, seed=seed)
        state = HistoryState(cfg, POSITIVES)
        first = {"user_id": np.arange(stored), "item_id": np.zeros(stored, np.int64),
                 "ts": np.arange(stored), "click": np.ones(stored, np.int8)}  # fmt: skip
        state.featurize(first, np.arange(stored), 0, 0)  # folded into the reservoir (R < stored)
        second = {"user_id": np.arange(stored, stored + in_chunk + 1), "item_id": np.zeros(in_chunk + 1, np.int64),
                  "ts": stored + np.arange(in_chunk + 1), "click": np.r_[np.ones(in_chunk), 0].astype(np.int8)}  # fmt: skip
        lists = state.featurize(second, np.arange(stored, stored + in_chunk + 1), 0, 1)[f"user_hist/{CHANNEL}"]
        drawn = lists.values[lists.offsets[-2] : lists.offsets[-1]]  # the query row: the chunk's last
        assert drawn.size == m and np.unique(drawn).size == m
        counts[drawn] += 1
    return counts


@pytest.mark.parametrize(("stored", "in_chunk"), [(60, 0), (40, 20)])
def test_uc_sampling_is_uniform_over_every_earlier_positive(stored: int, in_chunk: int) -> None:
    # Over seeds, each earlier positive user is drawn with probability m / (stored + in_chunk), although the state
    # keeps only r of the stored ones: the reservoir is uniform and the hypergeometric split is exact.
    seeds, m = 400, 5
    counts = _draw_frequencies(seeds, stored, in_chunk, m=m, r=10)
    expected = seeds * m / (stored + in_chunk)
    assert stats.chisquare(counts, np.full(counts.size, expected)).pvalue > 1e-3
    # Teeth: taking the chunk's users in proportion to their count instead of the hypergeometric split would be
    # visible: stored vs in-chunk mean frequency must match.
    if in_chunk:
        assert counts[:stored].mean() == pytest.approx(counts[stored:].mean(), rel=0.15)


def test_state_round_trip_and_continuation(tmp_path: Path) -> None:
    log = make_log(500, users=15, items=20, seed=3)
    cfg = HistoryConfig(max_item_hist=4, max_user_hist=3, item_reservoir=6, chunk_rows=50)
    whole = HistoryState(cfg, POSITIVES)
    featurize(whole, {c: v[:250] for c, v in log.items()}, 50, day=0)
    tail_whole = featurize(whole, {c: v[250:] for c, v in log.items()}, 50, day=1)
    saved = HistoryState(cfg, POSITIVES)
    featurize(saved, {c: v[:250] for c, v in log.items()}, 50, day=0)
    saved.save(tmp_path / "state.npz")
    resumed = HistoryState.load(tmp_path / "state.npz", cfg, POSITIVES)
    tail_resumed = featurize(resumed, {c: v[250:] for c, v in log.items()}, 50, day=1)
    for feature in ("item_hist", "user_hist"):
        for (a, at), (b, bt) in zip(rows_of(tail_whole, feature), rows_of(tail_resumed, feature), strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(at, bt)
    with pytest.raises(ValueError, match="history state built with"):
        HistoryState.load(tmp_path / "state.npz", HistoryConfig(max_item_hist=5), POSITIVES)
    usage = resumed.nbytes()
    assert usage["bytes_per_user"] == 16 * 4 + 8 + 8 + 8 and usage["bytes_per_item"] == 24 * 6 + 8 + 8 + 8


def test_segments_count_engagements_before_the_chunk() -> None:
    cfg = HistoryConfig(segment_edges=(2, 4), chunk_rows=3)
    state = HistoryState(cfg, ("click", "like"))
    log = {"user_id": np.zeros(9, np.int64), "item_id": np.arange(9), "ts": np.arange(9),
           "click": np.ones(9, np.int8), "like": np.zeros(9, np.int8)}  # fmt: skip
    segments = np.concatenate([ch["segment"] for ch in featurize(state, log, 3)])
    np.testing.assert_array_equal(segments, [0, 0, 0, 1, 1, 1, 2, 2, 2])  # 0, 3, 6 engagements before each chunk


def test_eviction_bounds_items_and_ids_index() -> None:
    cfg = HistoryConfig(evict_after_days=1, chunk_rows=100)
    state = HistoryState(cfg, POSITIVES)
    day = 86_400
    log = {"user_id": np.array([1, 2, 3]), "item_id": np.array([7, 8, 9]), "ts": np.array([0, day, 2 * day]),
           "click": np.ones(3, np.int8)}  # fmt: skip
    state.featurize(log, np.arange(3), 0, 0)
    assert state.evict(now_ts=2 * day - 10) == 1  # item 7, idle for > 1 day
    assert state.items.lookup(np.array([7, 8, 9])).tolist() == [-1, 0, 1]
    # Users' lists hold raw ids, so evicting item 7 (and renumbering 8, 9) leaves them intact.
    later = {"user_id": np.array([1, 3]), "item_id": np.array([8, 9]), "ts": np.array([3 * day, 3 * day + 1]),
             "click": np.zeros(2, np.int8)}  # fmt: skip
    lists = state.featurize(later, np.arange(3, 5), 0, 1)[f"item_hist/{CHANNEL}"]
    assert lists.values.tolist() == [7, 9] and lists.offsets.tolist() == [0, 1, 2]
    index = IdIndex()
    assert index.add(np.array([5, 3, 5, 9])).tolist() == [0, 1, 0, 2]
    assert index.lookup(np.array([9, 4])).tolist() == [2, -1]


def test_floyd_sample_is_a_uniform_subset() -> None:
    from framework.data.logs.history import floyd_sample

    rng = np.random.default_rng(0)
    reps = 20_000
    rows, picks = floyd_sample(np.full(reps, 6), np.full(reps, 2), rng)
    assert (np.bincount(rows) == 2).all()
    pairs = picks.reshape(reps, 2)
    assert (pairs[:, 0] != pairs[:, 1]).all() and ((pairs >= 0) & (pairs < 6)).all()
    codes = np.sort(pairs, axis=1) @ np.array([6, 1])
    counts = np.unique(codes, return_counts=True)[1]
    assert counts.size == 15 and stats.chisquare(counts).pvalue > 1e-3  # all C(6,2) pairs equally likely
    rows, picks = floyd_sample(np.array([5, 0, 3]), np.array([5, 0, 1]), rng)
    assert rows.tolist() == [0, 0, 0, 0, 0, 2] and sorted(picks[:5].tolist()) == [0, 1, 2, 3, 4]
