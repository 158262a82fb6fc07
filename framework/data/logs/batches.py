"""Featurized log rows -> :class:`~framework.data.ranking.batches.RankingBatch` for ICR / UCR / Hybrid.

The same KJT keys as the MovieLens batches (``target_item``, ``item_hist``, ``target_user``, ``user_hist``) so the
ranking model is unchanged; the lists come from one channel (``channel``) of the featurized rows. Rows map to
embedding rows through each table's :class:`~framework.data.logs.ids.TableIds` (grow or hash). A rank's slice is
padded to ``pad_to`` rows (weight 0, row 0, empty lists) so every rank steps on the same local batch size, also on
the day's last, shorter global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from framework.data.logs.features import FeatureRows
from framework.data.logs.ids import TableIds
from framework.data.ranking.batches import FEATURE_TABLE, FEATURES_BY_FORMULATION, RankingBatch, time_bucket


def make_log_batch(
    rows: FeatureRows,
    *,
    formulation: str,
    ids: Mapping[str, TableIds],
    labels: tuple[str, ...],
    channel: str,
    num_time_buckets: int,
    pad_to: int | None = None,
    user_map: Callable[[np.ndarray], np.ndarray] | None = None,
    locality: bool = False,
) -> RankingBatch:
    """``user_map``: raw user id -> the id the user table sees (UC-Clustering: its cluster, -1 for none).

    ``locality`` (seed §3.5.3): the rows of one owner in this batch (ICR's item list: the user; UCR's user list: the
    item) share the list of the owner's first row, which alone carries it (``share_index``): the list is looked up,
    time-encoded and projected once per owner and batch. Later rows of the owner lose the batch's own earlier events
    (and keep the first row's relative times): an approximation bounded by one batch.
    """
    n = len(rows)
    B = max(n, pad_to or 0)
    ts = np.asarray(rows.columns["ts"], np.int64)
    values: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    buckets: dict[str, torch.Tensor] = {}
    share: dict[str, torch.Tensor] = {}
    for feature in FEATURES_BY_FORMULATION[formulation]:
        table = ids[FEATURE_TABLE[feature]]
        lengths_B = np.zeros(B, np.int32)
        if feature.startswith("target_"):
            raw = rows.columns["item_id" if feature == "target_item" else "user_id"]
            if feature == "target_user" and user_map is not None:
                raw = user_map(raw)
            row_ids = np.zeros(B, np.int64)
            row_ids[:n] = table.rows(raw)
            lengths_B[:] = 1
        else:
            offsets, raw = rows.lists[f"{feature}.{channel}"]
            _, hist_ts = rows.lists[f"{feature}_ts.{channel}"]
            per_row = np.diff(offsets)
            if locality and n:
                owner = rows.columns["user_id" if feature == "item_hist" else "item_id"]
                _, first, inverse = np.unique(owner, return_index=True, return_inverse=True)
                leader = first[inverse]
                share[feature] = torch.from_numpy(np.concatenate([leader, np.arange(n, B)]).astype(np.int64))
                keep = np.repeat(leader == np.arange(n), per_row)
                raw, hist_ts = raw[keep], hist_ts[keep]
                per_row = np.where(leader == np.arange(n), per_row, 0)
            lengths_B[:n] = per_row
            if feature == "user_hist" and user_map is not None:
                raw = user_map(raw)
            row_ids = table.rows(raw)
            delta = np.repeat(ts, per_row) - hist_ts
            buckets[feature] = torch.from_numpy(time_bucket(delta, num_time_buckets))
        values.append(row_ids)
        lengths.append(lengths_B)
    sparse = KeyedJaggedTensor(
        keys=list(FEATURES_BY_FORMULATION[formulation]),
        values=torch.from_numpy(np.concatenate(values)),
        lengths=torch.from_numpy(np.concatenate(lengths)),
        stride=B,
    )
    labels_BT = np.zeros((B, len(labels)), np.float32)
    labels_BT[:n] = np.stack([np.asarray(rows.columns[c], np.float32) for c in labels], axis=1) if n else 0.0
    weights = np.zeros(B, np.float32)
    weights[:n] = 1.0
    index = np.full(B, -1, np.int64)
    index[:n] = rows.positions
    return RankingBatch(
        sparse=sparse,
        time_buckets=buckets,
        labels=torch.from_numpy(labels_BT),
        weights=torch.from_numpy(weights),
        example_index=torch.from_numpy(index),
        share_index=share,
    )
