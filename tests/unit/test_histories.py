"""History lists: no leakage, most-recent-N, UC-Sampling bounds and time buckets."""

import math

import numpy as np
import pytest

from framework.data.ranking.batches import RankingData, time_bucket
from framework.data.ranking.interactions import Interactions
from framework.data.ranking.synthetic import generate_synthetic

A, B, C = 10, 20, 30
X, Y, Z = 100, 200, 300

# (timestamp, user, item, label); several groups share a second on purpose.
_EVENTS = [
    (100, A, X, 1),  # 0
    (100, B, X, 1),  # 1  same second as 0, same item
    (150, C, Y, 0),  # 2  negative: never in a list
    (200, A, Y, 1),  # 3
    (200, C, X, 1),  # 4
    (200, B, Y, 1),  # 5  same second as 3, same item
    (200, C, Z, 1),  # 6  same second as 4, same user
    (300, A, X, 0),  # 7  negative
    (300, C, Y, 1),  # 8
    (400, B, X, 1),  # 9
]
# Worked out by hand: positives of the same user / item strictly before the event's second.
_EXPECTED_ITEM_HIST = [[], [], [], [0], [], [1], [], [0, 3], [4, 6], [1, 5]]
_EXPECTED_USER_HIST = [[], [], [], [], [0, 1], [], [], [0, 1, 4], [3, 5], [0, 1, 4]]


def _hand_made() -> Interactions:
    ts, users, items, labels = zip(*_EVENTS, strict=True)
    return Interactions.create(users, items, ts, np.array(labels, np.float32))


def _split_lists(events: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [events[bounds[e] : bounds[e + 1]].tolist() for e in range(lengths.size)]


def test_hand_made_lists_exclude_future_and_same_second() -> None:
    inter = _hand_made()
    np.testing.assert_array_equal(inter.timestamp, [e[0] for e in _EVENTS])  # already in order
    data = RankingData(inter, formulation="hybrid", test_fraction=0.0)
    hist = data.history_lists(np.arange(len(_EVENTS)))
    assert _split_lists(hist.item_hist_events, hist.item_hist_lengths) == _EXPECTED_ITEM_HIST
    assert _split_lists(hist.user_hist_events, hist.user_hist_lengths) == _EXPECTED_USER_HIST
    t_example = np.repeat(inter.timestamp, hist.item_hist_lengths)
    assert np.all(inter.timestamp[hist.item_hist_events] < t_example)
    t_example = np.repeat(inter.timestamp, hist.user_hist_lengths)
    assert np.all(inter.timestamp[hist.user_hist_events] < t_example)


def test_hand_made_lists_through_the_batch_features() -> None:
    inter = _hand_made()
    data = RankingData(inter, formulation="hybrid", hash_sizes={"item": None, "user": None}, test_fraction=0.0)
    batch = data.make_batch(np.arange(len(_EVENTS)))
    item_vocab, user_vocab = data.mappers["item"].vocab, data.mappers["user"].vocab
    kjt = batch.sparse.to_dict()
    got_items = [item_vocab[v.numpy()].tolist() for v in kjt["item_hist"].to_dense()]
    got_users = [user_vocab[v.numpy()].tolist() for v in kjt["user_hist"].to_dense()]
    assert got_items == [[_EVENTS[j][2] for j in lst] for lst in _EXPECTED_ITEM_HIST]
    assert got_users == [[_EVENTS[j][1] for j in lst] for lst in _EXPECTED_USER_HIST]


def test_item_hist_keeps_most_recent_n() -> None:
    inter = _hand_made()
    data = RankingData(inter, formulation="icr", max_item_hist=1, test_fraction=0.0)
    hist = data.history_lists(np.arange(len(_EVENTS)))
    assert _split_lists(hist.item_hist_events, hist.item_hist_lengths) == [lst[-1:] for lst in _EXPECTED_ITEM_HIST]

    # One user with 10 positives at t=10..100, target at t=1000: the last 3, oldest first.
    n = 10
    users = np.full(n + 1, 7)
    items = np.arange(n + 1) + 500
    ts = np.concatenate([np.arange(1, n + 1) * 10, [1000]])
    inter = Interactions.create(users, items, ts, np.ones(n + 1, np.float32))
    data = RankingData(inter, formulation="icr", max_item_hist=3, test_fraction=0.0)
    hist = data.history_lists(np.array([n]))
    assert inter.item_raw[hist.item_hist_events].tolist() == [507, 508, 509]


def test_time_bucket_formula() -> None:
    deltas = np.array([0, 1, 59, 60, 119, 120, 179, 180, 419, 420, 3600, 10**7, 10**9])
    rng = np.random.default_rng(0)
    edges = 60 * (2 ** np.arange(1, 24) - 1)  # exactly where the bucket changes
    deltas = np.concatenate([deltas, edges - 1, edges, edges + 1, rng.integers(0, 10**9, 2000)])
    for nb in (1, 8, 32):
        want = [min(nb - 1, math.floor(math.log2(1 + int(d) / 60))) for d in deltas]
        assert time_bucket(deltas, nb).tolist() == want
    assert time_bucket(np.array([1, 59, 60, 179, 180, 3600, 10**7]), 8).tolist() == [0, 0, 1, 1, 2, 5, 7]


def test_time_buckets_aligned_with_values() -> None:
    # User U engaged items 1..9 and users 11..19 engaged item J, at these offsets before t0.
    t0 = 10**6
    deltas = [10**7 // 100 * 100, 3600, 180, 179, 120, 119, 60, 59, 1]  # oldest first
    want = [min(7, math.floor(math.log2(1 + d / 60))) for d in deltas]
    u, j = 1, 99
    rows = [(u, k + 1, t0 - d) for k, d in enumerate(deltas)]
    rows += [(11 + k, j, t0 - d) for k, d in enumerate(deltas)]
    rows += [(u, j, t0), (50, 77, t0)]  # the example, and one with empty histories
    users, items, ts = (np.array(c) for c in zip(*rows, strict=True))
    inter = Interactions.create(users, items, ts, np.ones(len(rows), np.float32))
    data = RankingData(inter, formulation="hybrid", num_time_buckets=8, test_fraction=0.0)
    example = int(np.flatnonzero((inter.user_raw == u) & (inter.item_raw == j))[0])
    other = int(np.flatnonzero(inter.user_raw == 50)[0])
    batch = data.make_batch(np.array([other, example, -1, example]))
    for feature in ("item_hist", "user_hist"):
        jt = batch.sparse[feature]
        assert jt.lengths().tolist() == [0, 9, 0, 9]
        assert batch.time_buckets[feature].shape == jt.values().shape
        assert batch.time_buckets[feature].tolist() == want + want


def _coarse_synthetic() -> Interactions:
    base = generate_synthetic(num_users=150, num_items=80, num_events=6000, days=3, seed=11)
    # Half-hour resolution creates many same-second groups, the hard case for leakage.
    return Interactions.create(
        base.user_raw, base.item_raw, base.timestamp // 1800 * 1800, base.labels, base.task_names
    )


@pytest.mark.parametrize("hash_user", [None, 97])
def test_histories_match_slow_reference(hash_user: int | None) -> None:
    inter = _coarse_synthetic()
    n_max, m_max = 7, 6
    data = RankingData(
        inter,
        formulation="hybrid",
        max_item_hist=n_max,
        max_user_hist=m_max,
        hash_sizes={"item": None, "user": hash_user},
    )
    examples = np.random.default_rng(0).choice(inter.num_examples, size=300, replace=False)
    hist = data.history_lists(examples)
    item_lists = _split_lists(hist.item_hist_events, hist.item_hist_lengths)
    user_lists = _split_lists(hist.user_hist_events, hist.user_hist_lengths)
    positive = inter.labels[:, 0] > 0.5
    sampled = 0
    for e, items_got, users_got in zip(examples, item_lists, user_lists, strict=True):
        u, i, t = inter.user_raw[e], inter.item_raw[e], inter.timestamp[e]
        # Obviously-correct reference: scan the whole log.
        items_ref = np.flatnonzero((inter.user_raw == u) & positive & (inter.timestamp < t))
        assert items_got == items_ref[-n_max:].tolist()
        users_ref = np.flatnonzero((inter.item_raw == i) & positive & (inter.timestamp < t))
        if users_ref.size <= m_max:
            assert users_got == users_ref.tolist()
        else:
            sampled += 1
            assert len(users_got) == m_max
            assert users_got == sorted(set(users_got))  # distinct, time (= position) ordered
            assert set(users_got) <= set(users_ref.tolist())
    assert sampled > 50  # the check exercised UC-Sampling, not only short lists

    batch = data.make_batch(examples)
    np.testing.assert_array_equal(
        batch.sparse["user_hist"].values().numpy(), data.mappers["user"](inter.user_raw[hist.user_hist_events])
    )
    np.testing.assert_array_equal(
        batch.sparse["item_hist"].values().numpy(), data.mappers["item"](inter.item_raw[hist.item_hist_events])
    )


def test_no_list_element_is_at_or_after_its_example_anywhere() -> None:
    inter = _coarse_synthetic()
    data = RankingData(inter, formulation="hybrid", max_item_hist=50, max_user_hist=20)
    every = np.arange(inter.num_examples)
    hist = data.history_lists(every)
    for events, lengths, owner in (
        (hist.item_hist_events, hist.item_hist_lengths, inter.user_raw),
        (hist.user_hist_events, hist.user_hist_lengths, inter.item_raw),
    ):
        example_of_element = np.repeat(every, lengths)
        assert np.all(inter.timestamp[events] < inter.timestamp[example_of_element])
        assert np.all(owner[events] == owner[example_of_element])
        assert np.all(inter.labels[events, 0] > 0.5)


# ---------------------------------------------------------------- split protocols: no test label in a train feature


def _events_of_lists(data: RankingData, split: str, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(list element events, the example each belongs to) over every batch of one pass of ``split``."""
    elements, owners = [], []
    examples = data.train_indices if split == "train" else data.test_indices
    for chunk in np.array_split(examples, 8):
        hist = data.history_lists(chunk, split, epoch)  # type: ignore[arg-type]
        elements += [hist.item_hist_events, hist.user_hist_events]
        owners += [np.repeat(chunk, hist.item_hist_lengths), np.repeat(chunk, hist.user_hist_lengths)]
    return np.concatenate(elements), np.concatenate(owners)


@pytest.mark.parametrize("protocol", ["chronological", "random", "user"])
def test_no_test_label_reaches_a_train_example_feature(protocol: str) -> None:
    inter = _coarse_synthetic()
    data = RankingData(inter, formulation="hybrid", max_item_hist=50, max_user_hist=8, split=protocol)
    train, test = data.train_indices, data.test_indices
    assert train.size and test.size and not np.intersect1d(train, test).size
    assert np.union1d(train, test).size == inter.num_examples
    elements, owners = _events_of_lists(data, "train")
    assert elements.size > 1000  # the check looked at real lists
    leaked = np.isin(elements, test)
    assert not leaked.any(), f"{int(leaked.sum())} test events in train examples' lists ({protocol})"
    assert np.all(inter.timestamp[elements] < inter.timestamp[owners])
    # Through the batches the trainer builds, too (features are embedding rows: compare the raw users' rows).
    if protocol == "user":
        test_users = np.unique(inter.user_raw[test])
        for batch in data.batches("train", batch_size=512, rank=0, world_size=1):
            rows = batch.sparse["user_hist"].values().numpy()
            assert not np.isin(rows, data.mappers["user"](test_users)).any()
            assert not np.isin(batch.example_index.numpy(), test).any()


@pytest.mark.parametrize("protocol", ["random", "user"])
def test_test_examples_may_use_any_earlier_event(protocol: str) -> None:
    inter = _coarse_synthetic()
    data = RankingData(inter, formulation="hybrid", max_item_hist=50, max_user_hist=8, split=protocol)
    elements, owners = _events_of_lists(data, "test")
    assert np.all(inter.timestamp[elements] < inter.timestamp[owners])
    assert np.isin(elements, data.test_indices).any()  # earlier test events are visible to test examples
    assert np.isin(elements, data.train_indices).any()


def test_user_protocol_holds_out_whole_users() -> None:
    inter = _coarse_synthetic()
    data = RankingData(inter, formulation="icr", split="user", test_fraction=0.2, split_seed=5)
    train_users = set(inter.user_raw[data.train_indices].tolist())
    test_users = set(inter.user_raw[data.test_indices].tolist())
    assert not train_users & test_users
    assert len(test_users) == round(0.2 * len(train_users | test_users))
    again = RankingData(inter, formulation="icr", split="user", test_fraction=0.2, split_seed=5, seed=9)
    np.testing.assert_array_equal(again.test_indices, data.test_indices)  # the training seed keeps the split


@pytest.mark.parametrize("protocol", ["chronological", "random", "user"])
def test_validation_holdout_never_sees_test_events(protocol: str) -> None:
    inter = _coarse_synthetic()
    full = RankingData(inter, formulation="hybrid", split=protocol)
    val = RankingData(inter, formulation="hybrid", split=protocol, holdout="validation", validation_fraction=0.2)
    pool = full.train_indices
    sub = val.interactions
    assert sub.num_examples == pool.size  # the log is the train events, nothing of test
    np.testing.assert_array_equal(sub.user_raw, inter.user_raw[pool])
    np.testing.assert_array_equal(sub.timestamp, inter.timestamp[pool])
    assert val.train_indices.size and val.test_indices.size
    assert val.test_indices.size == pytest.approx(0.2 * pool.size, rel=0.35)
    elements, _ = _events_of_lists(val, "train")
    assert not np.isin(elements, val.test_indices).any()
