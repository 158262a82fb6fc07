"""Featurized days on disk, their reader, the id spaces and the batches the daily trainer steps on."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import torch

from framework.data.logs.batches import make_log_batch
from framework.data.logs.features import FeatureReader, featurize_logs
from framework.data.logs.generator import WorldConfig, generate_logs
from framework.data.logs.history import HistoryConfig, HistoryState
from framework.data.logs.ids import TableIds
from framework.data.logs.reader import rank_slices
from framework.data.logs.schema import LogSchema
from framework.models.ranking.model import RankingModel

SCHEMA = LogSchema()
WORLD = WorldConfig(num_users=400, events_per_day=4000, new_items_per_day=60, parts_per_day=2, row_group_rows=700)
HIST = HistoryConfig(channels=("click", "like"), max_item_hist=6, max_user_hist=5, item_reservoir=10, chunk_rows=300)


@pytest.fixture(scope="module")
def featurized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dt.date], HistoryState]:
    root = tmp_path_factory.mktemp("logs")
    days = generate_logs(root / "raw", 2, WORLD)
    state = HistoryState(HIST, SCHEMA.positives)
    for d, day in enumerate(days):
        stats = featurize_logs(str(root / "raw"), day, d, state, root / "features", SCHEMA, row_group_rows=512)
        assert stats["rows"] == WORLD.events_per_day and stats["bad_records"]["total"] == 0
    return root, days, state


def test_featurized_rows_keep_raw_columns_and_strictly_earlier_lists(featurized) -> None:
    root, days, _ = featurized
    reader = FeatureReader(root / "features", days[1], SCHEMA, HIST.channels)
    assert reader.num_rows == WORLD.events_per_day
    rows = reader.read(0, reader.num_rows)
    raw = pq_columns(root / "raw", days[1])
    for c in SCHEMA.columns:
        np.testing.assert_array_equal(rows.columns[c], raw[c])
    for feature in ("item_hist", "user_hist"):
        offsets, _ = rows.lists[f"{feature}.click"]
        _, hist_ts = rows.lists[f"{feature}_ts.click"]
        owner_ts = np.repeat(rows.columns["ts"], np.diff(offsets))
        assert (hist_ts < owner_ts).all()  # strictly before each row
        assert np.diff(offsets).max() == (6 if feature == "item_hist" else 5)
    # Day 2 lists reach back into day 1 (the state is carried over).
    first_ts = rows.columns["ts"][0]
    assert (rows.lists["item_hist_ts.click"][1] < first_ts).any()
    # Slices read back equal the whole (row groups of 512 are crossed).
    part = reader.read(500, 1300)
    np.testing.assert_array_equal(part.columns["user_id"], rows.columns["user_id"][500:1300])
    off, val = part.lists["user_hist.like"]
    full_off, full_val = rows.lists["user_hist.like"]
    np.testing.assert_array_equal(val, full_val[full_off[500] : full_off[1300]])
    np.testing.assert_array_equal(off, full_off[500:1301] - full_off[500])


def pq_columns(root: Path, day: dt.date) -> dict[str, np.ndarray]:
    from framework.data.logs.reader import LogReader

    chunks = list(LogReader(str(root), day, SCHEMA).chunks())
    return {c: np.concatenate([ch.columns[c] for ch in chunks]) for c in SCHEMA.columns}


def test_lists_see_same_day_events_that_other_ranks_train_on(featurized) -> None:
    root, days, _ = featurized
    reader = FeatureReader(root / "features", days[1], SCHEMA, HIST.channels)
    rows = reader.read(0, reader.num_rows)
    B = 256
    slices = {r: list(rank_slices(0, reader.num_rows, B, r, 2)) for r in range(2)}
    offsets, items = rows.lists["item_hist.click"]
    _, hist_ts = rows.lists["item_hist_ts.click"]
    found = 0
    for (_, lo0, hi0), (_, lo1, hi1) in zip(slices[0], slices[1], strict=True):
        for e in range(lo1, hi1):  # rank 1's rows: a list entry that is one of rank 0's rows of the same batch
            a, b = offsets[e], offsets[e + 1]
            entries = set(zip(items[a:b].tolist(), hist_ts[a:b].tolist(), strict=True))
            other = set(zip(rows.columns["item_id"][lo0:hi0][rows.columns["click"][lo0:hi0] == 1].tolist(),
                            rows.columns["ts"][lo0:hi0][rows.columns["click"][lo0:hi0] == 1].tolist(), strict=True))  # fmt: skip
            users0 = rows.columns["user_id"][lo0:hi0]
            if entries & other and rows.columns["user_id"][e] in users0:
                found += 1
    assert found > 0


def test_table_ids_grow_and_hash() -> None:
    grow = TableIds("item", "grow")
    grow.observe(np.array([50, 70, 50]))
    assert grow.num_embeddings == 3 and grow.rows(np.array([70, 50, 99])).tolist() == [2, 1, 0]
    grow.observe(np.array([99]))
    assert grow.num_embeddings == 4 and grow.rows(np.array([70, 99])).tolist() == [2, 3]  # old rows never move
    hashed = TableIds("item", "hash", hash_size=8)
    hashed.observe(np.arange(100))
    s = hashed.stats()
    assert s.rows == 8 and s.distinct_ids == 100 and s.rows_in_use == 8 and s.collision_rate == 1.0
    with pytest.raises(ValueError, match="hash_size"):
        TableIds("item", "hash")


@pytest.mark.parametrize("formulation", ["icr", "ucr", "hybrid"])
def test_batches_feed_the_ranking_model(featurized, formulation: str) -> None:
    root, days, state = featurized
    reader = FeatureReader(root / "features", days[1], SCHEMA, HIST.channels)
    rows = reader.read(100, 160)
    ids = {t: TableIds(t, "grow") for t in ("item", "user")}
    ids["item"].observe(rows.columns["item_id"][:30])  # the rest are unseen: row 0
    ids["user"].observe(state.users.ids)
    batch = make_log_batch(rows, formulation=formulation, ids=ids, labels=SCHEMA.labels, channel="click",
                           num_time_buckets=16, pad_to=64)  # fmt: skip
    assert batch.batch_size == 64 and batch.weights.sum() == 60 and batch.labels.shape == (64, 6)
    assert (batch.example_index[:60] == torch.arange(100, 160)).all() and (batch.example_index[60:] == -1).all()
    model = RankingModel(formulation=formulation, num_embeddings={t: ids[t].num_embeddings for t in ids},
                         embedding_dim=8, task_names=list(SCHEMA.labels), num_time_buckets=16,
                         embedding_backend="torch")  # fmt: skip
    logits = model(batch.sparse, batch.time_buckets)
    assert logits.shape == (64, 6) and torch.isfinite(logits).all()


@pytest.mark.parametrize(("formulation", "pooling"), [("icr", "attention"), ("ucr", "sum"), ("hybrid", "attention")])
def test_locality_batching_shares_each_owners_first_list(featurized, formulation: str, pooling: str) -> None:
    from framework.data.logs.features import FeatureRows

    root, days, state = featurized
    rows = FeatureReader(root / "features", days[1], SCHEMA, HIST.channels).read(200, 456)
    ids = {t: TableIds(t, "grow") for t in ("item", "user")}
    ids["item"].observe(rows.columns["item_id"])
    ids["user"].observe(state.users.ids)
    kw = dict(formulation=formulation, ids=ids, labels=SCHEMA.labels, channel="click", num_time_buckets=16, pad_to=260)
    shared = make_log_batch(rows, locality=True, **kw)
    # The same rows with every list replaced by its owner's first list in the batch, the plain way.
    lists = dict(rows.lists)
    for feature, owner_col in (("item_hist", "user_id"), ("user_hist", "item_id")):
        _, first, inverse = np.unique(rows.columns[owner_col], return_index=True, return_inverse=True)
        leader = first[inverse]
        for suffix in ("", "_ts"):
            off, val = rows.lists[f"{feature}{suffix}.click"]
            lengths = np.diff(off)[leader]
            take = np.concatenate([np.arange(off[j], off[j + 1]) for j in leader])
            lists[f"{feature}{suffix}.click"] = (np.concatenate([[0], np.cumsum(lengths)]), val[take])
    reference_rows = FeatureRows(rows.columns, lists, rows.positions)
    # No time encoding here: a shared list keeps the first row's relative times, the plain rows their own.
    model = RankingModel(formulation=formulation, num_embeddings={t: ids[t].num_embeddings for t in ids},
                         embedding_dim=8, task_names=list(SCHEMA.labels), num_time_buckets=0, pooling=pooling,
                         embedding_backend="torch")  # fmt: skip
    plain = make_log_batch(reference_rows, **kw)
    got = model(shared.sparse, shared.time_buckets, shared.share_index)
    want = model(plain.sparse, plain.time_buckets)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # Fewer ids travel to the embedding lookup: each owner's list once.
    assert shared.sparse.values().numel() < plain.sparse.values().numel()
    assert set(shared.share_index) == {f for f in ("item_hist", "user_hist") if f in shared.sparse.keys()}
    ignored = model(shared.sparse, shared.time_buckets)  # teeth: without the share index the lists are missing
    assert not torch.allclose(ignored, want, atol=1e-3)
