"""Batches for item-centric (ICR), user-centric (UCR) and hybrid ranking.

For an example e = (u, i, t):

* ``item_hist``: the most recent ``max_item_hist`` items u engaged positively
  strictly before t, oldest first (ICR's user representation).
* ``user_hist``: users who engaged i positively strictly before t (UCR's item
  representation); when there are more than ``max_user_hist`` of them, a fresh
  uniform reservoir sample is drawn for this very example (UC-Sampling), then
  ordered by time.

"Strictly before" also excludes events in the same second as the example, so no
label of the example's own timestamp can leak into its features.

Split protocols (``split``): ``chronological`` (the last 20% of time is test),
``random`` (a seeded 4:1 split of events) and ``user`` (every event of a seeded
20% of users is test). All are leakage-free by one rule: **no test label ever
enters a feature of a train example** (the model would memorize it through the
embeddings it trains). Train examples' lists therefore draw only on train-split
events (the "train view"); a test example may use any event strictly before its
own time (the "all view"), since nothing is trained on its features. With
``holdout="validation"`` the test events are dropped altogether and the same
protocol carves a validation split out of the train events: tuning never sees test.

UC-Sampling draws are keyed by the example (seed, split, epoch for train, event
position), not by rank or step: a batch is the same whatever the world size that
builds it, so resuming at another world size and evaluating on any number of
ranks give the same examples and the same lists.

Everything is precomputed once into CSR arrays sorted by (owner, time); a batch
is then a handful of vectorized ``searchsorted``/``repeat`` operations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from framework.data.jagged import concat_ranges
from framework.data.ranking.hashing import TABLE_SALTS, CollisionStats, IdMapper, stream_keys
from framework.data.ranking.interactions import Interactions, SplitMode, split_indices
from framework.data.ranking.sampling import reservoir_sample_keyed

TABLES: dict[str, tuple[str, str]] = {
    "item": ("target_item", "item_hist"),
    "user": ("target_user", "user_hist"),
}
FEATURES_BY_FORMULATION: dict[str, list[str]] = {
    "icr": ["target_item", "item_hist"],
    "ucr": ["target_user", "user_hist"],
    "hybrid": ["target_item", "item_hist", "target_user", "user_hist"],
}
FEATURE_TABLE: dict[str, str] = {f: table for table, feats in TABLES.items() for f in feats}

Split = Literal["train", "test"]
Holdout = Literal["test", "validation"]

# Tags that keep the seed streams of different purposes apart.
_STREAM_TRAIN_ORDER = 0
_STREAM_TRAIN_SAMPLE = 1
_STREAM_TEST_SAMPLE = 2
_SECONDS_PER_MINUTE = 60


@dataclass
class RankingBatch:
    """One rank's batch.

    Attributes:
        sparse: features in ``FEATURES_BY_FORMULATION`` order; values are
            embedding rows (int64), lengths int32 [num_keys * B]; every
            ``target_*`` feature has length 1 per example.
        time_buckets: per ``*_hist`` feature, int64 [num values of that feature],
            aligned element by element with ``sparse[feature].values()``.
        labels: float32 [B, T].
        weights: float32 [B]; 1 for real examples, 0 for padding.
        example_index: int64 [B]; event position in the Interactions, -1 for padding.
        share_index: per ``*_hist`` feature with locality batching, int64 [B]: the row whose list each row
            uses (the other rows' lists are empty in ``sparse``); empty without it.
    """

    sparse: KeyedJaggedTensor
    time_buckets: dict[str, torch.Tensor]
    labels: torch.Tensor
    weights: torch.Tensor
    example_index: torch.Tensor
    share_index: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        """Number of examples B, padding included."""
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RankingBatch:
        """Returns a copy with every tensor on ``device``."""
        return RankingBatch(
            sparse=self.sparse.to(device=torch.device(device), non_blocking=non_blocking),
            time_buckets={k: v.to(device, non_blocking=non_blocking) for k, v in self.time_buckets.items()},
            labels=self.labels.to(device, non_blocking=non_blocking),
            weights=self.weights.to(device, non_blocking=non_blocking),
            example_index=self.example_index.to(device, non_blocking=non_blocking),
            share_index={k: v.to(device, non_blocking=non_blocking) for k, v in self.share_index.items()},
        )

    def pin_memory(self) -> RankingBatch:
        """Returns a copy in pinned host memory (for non-blocking host-to-device copies)."""
        return RankingBatch(
            sparse=self.sparse.pin_memory(),
            time_buckets={k: v.pin_memory() for k, v in self.time_buckets.items()},
            labels=self.labels.pin_memory(),
            weights=self.weights.pin_memory(),
            example_index=self.example_index.pin_memory(),
            share_index={k: v.pin_memory() for k, v in self.share_index.items()},
        )


@dataclass(frozen=True, eq=False)
class HistoryLists:
    """History lists of a set of examples as event positions in the Interactions.

    Attributes:
        item_hist_events: int64 [sum(item_hist_lengths)] events of the example's
            user, concatenated per example, oldest first (empty if unused).
        item_hist_lengths: int64 [N] per-example lengths.
        user_hist_events: int64 [sum(user_hist_lengths)] events on the example's
            item, concatenated per example, oldest first (empty if unused).
        user_hist_lengths: int64 [N] per-example lengths.
    """

    item_hist_events: np.ndarray
    item_hist_lengths: np.ndarray
    user_hist_events: np.ndarray
    user_hist_lengths: np.ndarray


def time_bucket(delta_seconds: np.ndarray, num_time_buckets: int) -> np.ndarray:
    """Log-scale relative-time bucket: min(nb - 1, floor(log2(1 + dt / 60))).

    Computed as floor(log2(floor((dt + 60) / 60))), which is equal for dt >= 0
    and exact in integer arithmetic (frexp of an integer-valued float gives its
    bit length), so bucket edges never suffer from float rounding.

    Args:
        delta_seconds: int64 array of non-negative time differences in seconds.
        num_time_buckets: number of buckets; larger differences saturate.

    Returns:
        int64 array of buckets in [0, num_time_buckets).
    """
    minutes_plus_one = (np.asarray(delta_seconds, dtype=np.int64) + _SECONDS_PER_MINUTE) // (_SECONDS_PER_MINUTE)
    _, bit_length = np.frexp(minutes_plus_one.astype(np.float64))
    return np.minimum(bit_length.astype(np.int64) - 1, num_time_buckets - 1)


class RankingData:
    """Precomputed histories, id mappings and split for one formulation.

    Example:
        data = RankingData(inter, formulation="hybrid", hash_sizes={"item": None, "user": 1 << 16})
        for batch in data.batches("train", batch_size=512, rank=rank, world_size=world, epoch=e):
            ...
    """

    def __init__(
        self,
        inter: Interactions,
        *,
        formulation: str,
        max_item_hist: int = 512,
        max_user_hist: int = 512,
        hash_sizes: dict[str, int | None] | None = None,
        num_time_buckets: int = 32,
        split: SplitMode = "chronological",
        test_fraction: float = 0.2,
        split_seed: int = 0,
        holdout: Holdout = "test",
        validation_fraction: float = 0.1,
        seed: int = 0,
    ):
        """Builds the history CSRs, id mappers and the train/test split.

        Args:
            inter: the time-sorted interaction log.
            formulation: "icr", "ucr" or "hybrid".
            max_item_hist: N, most recent positive items kept per example.
            max_user_hist: M, reservoir size for positive users of the item.
            hash_sizes: per table ("item", "user") rows of a hashed table, or None
                for an exact vocabulary; missing tables default to None.
            num_time_buckets: relative-time buckets for history elements.
            split: protocol, "chronological", "random" or "user" (module docstring).
            test_fraction: fraction of events (users, for "user") in the test split.
            split_seed: seeds the "random" and "user" splits (independent of ``seed``, so
                training seeds share one split).
            holdout: "test" evaluates on the test split; "validation" drops the test
                events and carves a validation split (same protocol) out of train: the
                ``"test"`` batches are then the validation examples.
            validation_fraction: fraction of the train events (users) held out with
                ``holdout="validation"``.
            seed: seeds the epoch permutations and UC-Sampling.

        Raises:
            ValueError: on an unknown formulation/table or out-of-range arguments.
        """
        if formulation not in FEATURES_BY_FORMULATION:
            raise ValueError(f"formulation must be one of {sorted(FEATURES_BY_FORMULATION)}, got {formulation!r}")
        for name, value in (
            ("max_item_hist", max_item_hist),
            ("max_user_hist", max_user_hist),
            ("num_time_buckets", num_time_buckets),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if seed < 0 or split_seed < 0:
            raise ValueError(f"seed and split_seed must be >= 0, got {seed}, {split_seed}")
        if holdout not in ("test", "validation"):
            raise ValueError(f"holdout must be 'test' or 'validation', got {holdout!r}")
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
        hash_sizes = dict(hash_sizes or {})
        unknown = set(hash_sizes) - set(TABLES)
        if unknown:
            raise ValueError(f"hash_sizes has unknown table(s) {sorted(unknown)}; known: {sorted(TABLES)}")

        train_idx, test_idx = split_indices(inter, split, test_fraction, split_seed)
        if holdout == "validation":
            inter = inter.select(train_idx)
            train_idx, test_idx = split_indices(inter, split, validation_fraction, split_seed + 1)
        self._train_idx, self._test_idx = train_idx, test_idx
        self.split = split
        self.holdout = holdout

        self._inter = inter
        self.formulation = formulation
        self.max_item_hist = max_item_hist
        self.max_user_hist = max_user_hist
        self.num_time_buckets = num_time_buckets
        self.seed = seed
        self._features = list(FEATURES_BY_FORMULATION[formulation])
        used_tables = {FEATURE_TABLE[f] for f in self._features}
        self._tables = [t for t in TABLES if t in used_tables]

        self._mappers: dict[str, IdMapper] = {}
        self._rows_E: dict[str, np.ndarray] = {}
        raw_by_table = {"item": inter.item_raw, "user": inter.user_raw}
        for table in self._tables:
            mapper = IdMapper(table, raw_by_table[table], hash_sizes.get(table), TABLE_SALTS[table])
            self._mappers[table] = mapper
            self._rows_E[table] = mapper(raw_by_table[table])

        ts = inter.timestamp
        # Dense time ranks (ts is sorted) make (owner, time) keys small enough for int64.
        self._ts_rank_E = np.concatenate([[0], np.cumsum(ts[1:] != ts[:-1])]).astype(np.int64)[: ts.size]
        self._num_ts = int(self._ts_rank_E[-1]) + 1 if ts.size else 1
        positive_E = inter.positive_mask()
        train_positive_E = np.zeros_like(positive_E)
        train_positive_E[train_idx] = positive_E[train_idx]
        # Chronologically, every event strictly before a train example is a train event: the views coincide.
        separate_views = split != "chronological"
        # view -> owner CSR; "train" lists hold train-split positives only, "all" lists every positive.
        self._user_csr: dict[str, _Csr] = {}
        self._item_csr: dict[str, _Csr] = {}
        owners = (("item_hist", self._user_csr, inter.user_raw), ("user_hist", self._item_csr, inter.item_raw))
        for feature, csr, raw in owners:
            if feature not in self._features:
                continue
            code_E = np.unique(raw, return_inverse=True)[1].astype(np.int64)
            csr["all"] = self._build_csr(code_E, positive_E)
            csr["train"] = self._build_csr(code_E, train_positive_E) if separate_views else csr["all"]
            if feature == "item_hist":
                self._user_code_E = code_E
            else:
                self._item_code_E = code_E

    # ------------------------------------------------------------------ properties

    @property
    def interactions(self) -> Interactions:
        """The underlying log."""
        return self._inter

    @property
    def features(self) -> list[str]:
        """KJT keys, in order."""
        return list(self._features)

    @property
    def feature_tables(self) -> dict[str, str]:
        """Feature name -> embedding table name, for the features in use."""
        return {f: FEATURE_TABLE[f] for f in self._features}

    @property
    def train_indices(self) -> np.ndarray:
        """int64 event positions of the train split, ascending."""
        return self._train_idx

    @property
    def test_indices(self) -> np.ndarray:
        """int64 event positions of the test split, ascending (time order)."""
        return self._test_idx

    @property
    def num_embeddings(self) -> dict[str, int]:
        """Rows per embedding table used by the formulation."""
        return {t: m.num_embeddings for t, m in self._mappers.items()}

    @property
    def task_names(self) -> tuple[str, ...]:
        """Label columns, in order."""
        return self._inter.task_names

    @property
    def mappers(self) -> dict[str, IdMapper]:
        """The id mappers of the tables in use."""
        return dict(self._mappers)

    def collision_stats(self) -> dict[str, CollisionStats]:
        """Hash-collision statistics over all raw ids in the data, per table in use."""
        return {t: m.collision_stats() for t, m in self._mappers.items()}

    # ------------------------------------------------------------------ histories

    def history_lists(self, example_index: np.ndarray, split: Split = "test", epoch: int = 0) -> HistoryLists:
        """Computes the history lists of real examples.

        Args:
            example_index: int64 [N] event positions (no padding).
            split: "train" builds train examples' lists: train-split events only, UC-Sampling re-drawn every
                epoch. "test" builds test examples' lists: any earlier event, one fixed draw per example.
            epoch: the training epoch (train only): selects the UC-Sampling draw.

        Returns:
            The lists as event positions, so callers can inspect raw ids and times.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        view = "train" if split == "train" else "all"
        idx = np.asarray(example_index, dtype=np.int64)
        empty = np.empty(0, dtype=np.int64)
        zeros = np.zeros(idx.shape[0], dtype=np.int64)
        item_events, item_lengths = empty, zeros
        user_events, user_lengths = empty, zeros
        if self._user_csr:
            csr = self._user_csr[view]
            start, end = self._prefix(csr, self._user_code_E[idx], idx)
            # Keep the most recent N: the tail of the strictly-earlier prefix.
            item_lengths = np.minimum(end - start, self.max_item_hist)
            item_events = csr.events[concat_ranges(end - item_lengths, item_lengths)]
        if self._item_csr:
            csr = self._item_csr[view]
            start, end = self._prefix(csr, self._item_code_E[idx], idx)
            user_events, user_lengths = self._sample_users(
                csr, start, end - start, self._sample_keys(idx, split, epoch)
            )
        return HistoryLists(item_events, item_lengths, user_events, user_lengths)

    def _sample_keys(self, idx: np.ndarray, split: Split, epoch: int) -> np.ndarray:
        if split == "train":
            return stream_keys(self.seed, _STREAM_TRAIN_SAMPLE, epoch, idx)
        return stream_keys(self.seed, _STREAM_TEST_SAMPLE, idx)

    def _sample_users(
        self, csr: _Csr, start: np.ndarray, count: np.ndarray, keys: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        m = self.max_user_hist
        lengths = np.minimum(count, m)
        out_offsets = np.cumsum(lengths) - lengths
        positions = np.empty(int(lengths.sum()), dtype=np.int64)
        short = count <= m
        positions[concat_ranges(out_offsets[short], lengths[short])] = concat_ranges(start[short], count[short])
        long = ~short
        if long.any():
            # A fresh sample per example (not per item): reusing one sample per item would tie
            # all of that item's examples to the same few users.
            rel_LM = reservoir_sample_keyed(count[long], m, keys[long])
            dst_LM = out_offsets[long][:, None] + np.arange(m)
            positions[dst_LM.ravel()] = (start[long][:, None] + rel_LM).ravel()
        return csr.events[positions], lengths

    def _prefix(self, csr: _Csr, code: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) of the owner's CSR segment strictly before each example's time."""
        # side="left" on (owner, time rank) stops before any event at the example's own second.
        end = np.searchsorted(csr.keys, code * self._num_ts + self._ts_rank_E[idx], side="left")
        return csr.offsets[code], end.astype(np.int64)

    def _build_csr(self, code_E: np.ndarray, positive_E: np.ndarray) -> _Csr:
        positives = np.flatnonzero(positive_E)
        # Stable sort by owner keeps each owner's events in time order (the log is time-sorted).
        events = positives[np.argsort(code_E[positives], kind="stable")]
        num_owners = int(code_E.max()) + 1 if code_E.size else 0
        counts = np.bincount(code_E[events], minlength=num_owners)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        keys = code_E[events] * self._num_ts + self._ts_rank_E[events]
        return _Csr(events=events.astype(np.int64), offsets=offsets, keys=keys)

    # ------------------------------------------------------------------ batches

    def make_batch(self, example_index: np.ndarray, split: Split = "test", epoch: int = 0) -> RankingBatch:
        """Builds a batch for the given event positions (-1 marks padding).

        Args:
            example_index: int64 [B] event positions; -1 entries become padding
                (weight 0, target rows 0, empty histories, zero labels).
            split: whose lists to build (see :meth:`history_lists`).
            epoch: training epoch (train only), selects the UC-Sampling draw.

        Returns:
            The batch.
        """
        example_index = np.asarray(example_index, dtype=np.int64)
        batch = example_index.shape[0]
        real_B = example_index >= 0
        idx = example_index[real_B]
        hist = self.history_lists(idx, split, epoch)
        ts_real = self._inter.timestamp[idx]

        values: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        buckets: dict[str, torch.Tensor] = {}
        for feature in self._features:
            rows_E = self._rows_E[FEATURE_TABLE[feature]]
            lengths_B = np.zeros(batch, dtype=np.int32)
            if feature.startswith("target_"):
                lengths_B[:] = 1
                ids = np.zeros(batch, dtype=np.int64)
                ids[real_B] = rows_E[idx]
            else:
                if feature == "item_hist":
                    events, per_example = hist.item_hist_events, hist.item_hist_lengths
                else:
                    events, per_example = hist.user_hist_events, hist.user_hist_lengths
                lengths_B[real_B] = per_example
                ids = rows_E[events]
                delta = np.repeat(ts_real, per_example) - self._inter.timestamp[events]
                buckets[feature] = torch.from_numpy(time_bucket(delta, self.num_time_buckets))
            values.append(ids)
            lengths.append(lengths_B)

        sparse = KeyedJaggedTensor(
            keys=list(self._features),
            values=torch.from_numpy(np.concatenate(values)),
            lengths=torch.from_numpy(np.concatenate(lengths)),
            stride=batch,
        )
        labels_BT = np.zeros((batch, self._inter.num_tasks), dtype=np.float32)
        labels_BT[real_B] = self._inter.labels[idx]
        return RankingBatch(
            sparse=sparse,
            time_buckets=buckets,
            labels=torch.from_numpy(labels_BT),
            weights=torch.from_numpy(real_B.astype(np.float32)),
            example_index=torch.from_numpy(example_index.copy()),
        )

    def num_batches(self, split: Split, batch_size: int, world_size: int, max_examples: int | None = None) -> int:
        """Steps per rank for one pass over ``split``.

        Train drops the last partial global batch; test pads it, so it counts.
        """
        _check_batching(split, batch_size, 0, world_size, 0, max_examples)
        n = self._split_size(split, max_examples)
        global_batch = batch_size * world_size
        return n // global_batch if split == "train" else -(-n // global_batch)

    def batches(
        self,
        split: Split,
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        epoch: int = 0,
        start_step: int = 0,
        max_examples: int | None = None,
    ) -> Iterator[RankingBatch]:
        """Yields this rank's batches of one pass over ``split``.

        Train: a permutation seeded by (seed, epoch); global batches of
        batch_size * world_size, the last partial one dropped so all ranks run
        the same number of steps; rank r takes slice [r*B, (r+1)*B) of each.
        Test: time order, last global batch padded (weight 0, index -1), so every
        test example appears exactly once over all ranks.

        UC-Sampling draws are keyed by (seed, epoch, example) for train and
        (seed, "test", example) for test, so any step can be rebuilt exactly
        (resuming with ``start_step``), and for a fixed global batch the batches
        do not depend on the world size.

        Args:
            split: "train" or "test".
            batch_size: per-rank batch size.
            rank: this rank, in [0, world_size).
            world_size: number of ranks.
            epoch: selects the train permutation and sampling streams.
            start_step: global steps to skip (resume).
            max_examples: use only the first this-many examples of the pass
                (after the epoch permutation for train; the earliest for test).

        Returns:
            An iterator over the batches.

        Raises:
            ValueError: on invalid arguments (raised here, not on first ``next``).
        """
        _check_batching(split, batch_size, rank, world_size, start_step, max_examples)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return self._iter_batches(split, batch_size, rank, world_size, epoch, start_step, max_examples)

    def _iter_batches(
        self,
        split: Split,
        batch_size: int,
        rank: int,
        world_size: int,
        epoch: int,
        start_step: int,
        max_examples: int | None,
    ) -> Iterator[RankingBatch]:
        if split == "train":
            order = np.random.default_rng([self.seed, _STREAM_TRAIN_ORDER, epoch]).permutation(self._train_idx)
        else:
            order = self._test_idx
        if max_examples is not None:
            order = order[:max_examples]
        global_batch = batch_size * world_size
        num_steps = self.num_batches(split, batch_size, world_size, max_examples)
        for step in range(start_step, num_steps):
            chunk = order[step * global_batch : (step + 1) * global_batch]
            if chunk.shape[0] < global_batch:
                chunk = np.concatenate([chunk, np.full(global_batch - chunk.shape[0], -1, np.int64)])
            local = chunk[rank * batch_size : (rank + 1) * batch_size]
            yield self.make_batch(local, split, epoch)

    def _split_size(self, split: Split, max_examples: int | None) -> int:
        n = self._train_idx.shape[0] if split == "train" else self._test_idx.shape[0]
        return n if max_examples is None else min(n, max_examples)


@dataclass(frozen=True, eq=False)
class _Csr:
    """Positive events grouped by owner (user or item), time-ordered within owner.

    events: event positions; offsets: [owners + 1] segment bounds; keys:
    owner * num_ts + time rank of each event, globally sorted, for searchsorted.
    """

    events: np.ndarray
    offsets: np.ndarray
    keys: np.ndarray


def _check_batching(
    split: str,
    batch_size: int,
    rank: int,
    world_size: int,
    start_step: int,
    max_examples: int | None,
) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if max_examples is not None and max_examples < 0:
        raise ValueError(f"max_examples must be >= 0 or None, got {max_examples}")
