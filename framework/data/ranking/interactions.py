"""Time-ordered user-item interaction logs and train/test splitting.

Every downstream index (history CSRs, splits, batches) refers to positions in an
:class:`Interactions` object, which is always sorted by timestamp. Keeping that
invariant in one place lets the history builder use ``searchsorted`` instead of
per-example scans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from framework.data.errors import DataFormatError

SplitMode = Literal["chronological", "random", "user"]
SPLIT_MODES: tuple[str, ...] = ("chronological", "random", "user")


@dataclass(frozen=True, eq=False)
class Interactions:
    """An event log of (user, item, timestamp, labels), sorted by timestamp.

    Build instances with :meth:`create`, which sorts the events; the raw
    constructor only validates and trusts the caller about ordering (it checks
    it, too, because every consumer relies on it).

    Attributes:
        user_raw: int64 [E] raw user ids as they appear in the source.
        item_raw: int64 [E] raw item ids.
        timestamp: int64 [E] unix seconds, non-decreasing.
        labels: float32 [E, T] one column per task.
        task_names: T task names, aligned with the columns of ``labels``.
        history_task: column of ``labels`` whose positives (label > 0.5) form the
            engagement histories.
        source: free-form description of where the data came from.
    """

    user_raw: np.ndarray
    item_raw: np.ndarray
    timestamp: np.ndarray
    labels: np.ndarray
    task_names: tuple[str, ...]
    history_task: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        for name, dtype in (("user_raw", np.int64), ("item_raw", np.int64), ("timestamp", np.int64)):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype != dtype:
                raise DataFormatError(
                    f"Interactions.{name} must be a 1-D {np.dtype(dtype)} array, got {_describe(arr)}"
                )
        num_events = self.user_raw.shape[0]
        for name in ("item_raw", "timestamp"):
            if getattr(self, name).shape[0] != num_events:
                raise DataFormatError(
                    f"Interactions.{name} has {getattr(self, name).shape[0]} events but user_raw has {num_events}"
                )
        if (
            not isinstance(self.labels, np.ndarray)
            or self.labels.ndim != 2
            or self.labels.dtype != np.float32
            or self.labels.shape[0] != num_events
        ):
            raise DataFormatError(
                f"Interactions.labels must be a float32 array of shape [{num_events}, T], got {_describe(self.labels)}"
            )
        if not isinstance(self.task_names, tuple) or len(self.task_names) != self.labels.shape[1]:
            raise DataFormatError(
                f"Interactions.task_names must be a tuple with one name per label column "
                f"({self.labels.shape[1]}), got {self.task_names!r}"
            )
        if len(set(self.task_names)) != len(self.task_names):
            raise DataFormatError(f"Interactions.task_names must be unique, got {self.task_names!r}")
        if not 0 <= self.history_task < len(self.task_names):
            raise DataFormatError(
                f"Interactions.history_task={self.history_task} is out of range for {len(self.task_names)} task(s)"
            )
        if num_events > 1 and np.any(self.timestamp[1:] < self.timestamp[:-1]):
            raise DataFormatError(
                "Interactions.timestamp must be non-decreasing; build through "
                "Interactions.create(), which sorts by time"
            )

    @classmethod
    def create(
        cls,
        user_raw: np.ndarray | Sequence[int],
        item_raw: np.ndarray | Sequence[int],
        timestamp: np.ndarray | Sequence[int],
        labels: np.ndarray | Sequence[float] | Sequence[Sequence[float]],
        task_names: Sequence[str] = ("like",),
        *,
        history_task: int = 0,
        source: str = "",
    ) -> Interactions:
        """Builds a time-sorted log from unsorted columns.

        The sort is stable, so events sharing a timestamp keep their input order;
        that makes every derived index reproducible.

        Args:
            user_raw: [E] integer user ids.
            item_raw: [E] integer item ids.
            timestamp: [E] integer unix seconds.
            labels: [E] (single task) or [E, T] labels.
            task_names: T task names.
            history_task: task whose positives form histories.
            source: description of the origin, kept for error messages and logs.

        Returns:
            The sorted, validated log.

        Raises:
            DataFormatError: if the columns disagree in length or dtype kind.
        """
        user = _as_int64("user_raw", user_raw)
        item = _as_int64("item_raw", item_raw)
        ts = _as_int64("timestamp", timestamp)
        labels_ET = np.asarray(labels, dtype=np.float32)
        if labels_ET.ndim == 1:
            labels_ET = labels_ET[:, None]
        if not (user.shape[0] == item.shape[0] == ts.shape[0] == labels_ET.shape[0]):
            raise DataFormatError(
                "Interactions.create: columns differ in length: "
                f"user_raw={user.shape[0]}, item_raw={item.shape[0]}, "
                f"timestamp={ts.shape[0]}, labels={labels_ET.shape[0]}"
            )
        order = np.argsort(ts, kind="stable")
        return cls(
            user_raw=np.ascontiguousarray(user[order]),
            item_raw=np.ascontiguousarray(item[order]),
            timestamp=np.ascontiguousarray(ts[order]),
            labels=np.ascontiguousarray(labels_ET[order]),
            task_names=tuple(task_names),
            history_task=history_task,
            source=source,
        )

    @property
    def num_examples(self) -> int:
        """Number of events E."""
        return int(self.user_raw.shape[0])

    @property
    def num_tasks(self) -> int:
        """Number of label columns T."""
        return int(self.labels.shape[1])

    def select(self, positions: np.ndarray) -> Interactions:
        """The log restricted to the events at ``positions`` (ascending), still time-sorted."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size > 1 and np.any(np.diff(positions) <= 0):
            raise ValueError("Interactions.select: positions must be strictly ascending")
        return Interactions(
            user_raw=self.user_raw[positions],
            item_raw=self.item_raw[positions],
            timestamp=self.timestamp[positions],
            labels=self.labels[positions],
            task_names=self.task_names,
            history_task=self.history_task,
            source=self.source,
        )

    def positive_mask(self) -> np.ndarray:
        """bool [E]: events that count as positive engagement for histories."""
        return self.labels[:, self.history_task] > 0.5


def split_indices(
    inter: Interactions,
    mode: SplitMode = "chronological",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Splits event positions into train and test sets.

    Args:
        inter: the (time-sorted) log.
        mode: "chronological" puts the last ``test_fraction`` of events (in time
            order) into test; events that share the timestamp at the cut all go to
            test so the split never separates same-second events. "random" puts a
            seeded ``test_fraction`` of events into test. "user" puts every event of
            a seeded ``test_fraction`` of the users into test (DIN's and the UCR
            authors' MovieLens protocol).
        test_fraction: fraction of events (users, for "user") in test, in [0, 1).
        seed: seed for the "random" and "user" modes.

    Returns:
        (train_idx, test_idx): int64 arrays of event positions, ascending.

    Raises:
        ValueError: on an unknown mode or an out-of-range test_fraction.
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode must be one of {', '.join(SPLIT_MODES)}, got {mode!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    num_events = inter.num_examples
    if mode == "user":
        users = np.unique(inter.user_raw)
        num_test_users = int(round(users.size * test_fraction))
        test_users = np.random.default_rng(seed).permutation(users)[:num_test_users]
        is_test = np.isin(inter.user_raw, test_users)
        return np.flatnonzero(~is_test).astype(np.int64), np.flatnonzero(is_test).astype(np.int64)
    num_test = int(round(num_events * test_fraction))
    if num_test == 0:
        return np.arange(num_events, dtype=np.int64), np.empty(0, dtype=np.int64)
    if mode == "chronological":
        cut = num_events - num_test
        # Ties at the cut go to the later (test) side, so a timestamp never spans both sets.
        cut = int(np.searchsorted(inter.timestamp, inter.timestamp[cut], side="left"))
        return np.arange(cut, dtype=np.int64), np.arange(cut, num_events, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(num_events)
    return np.sort(perm[num_test:]).astype(np.int64), np.sort(perm[:num_test]).astype(np.int64)


def _as_int64(name: str, values: np.ndarray | Sequence[int]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataFormatError(f"Interactions.create: {name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataFormatError(f"Interactions.create: {name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _describe(arr: object) -> str:
    if isinstance(arr, np.ndarray):
        return f"{arr.dtype} array of shape {arr.shape}"
    return type(arr).__name__
