"""Background batch prefetching keeps order, surfaces producer errors, and stops its thread on early exit."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from framework.trainers.common import Prefetcher


def _failing(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError(f"producer failed after {n} items")


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_same_items_same_order(depth: int) -> None:
    with Prefetcher(iter(range(50)), depth) as it:
        assert list(it) == list(range(50))
        with pytest.raises(StopIteration):  # stays exhausted
            next(it)


@pytest.mark.parametrize("depth", [0, 2])
def test_producer_error_reaches_consumer_after_the_good_items(depth: int) -> None:
    seen = []
    with pytest.raises(ValueError, match="after 4 items"), Prefetcher(_failing(4), depth) as it:
        for x in it:
            seen.append(x)
    assert seen == [0, 1, 2, 3]


def test_breaking_out_early_stops_the_worker() -> None:
    produced = []

    def source() -> Iterator[int]:
        for i in range(10_000):
            produced.append(i)
            yield i

    with Prefetcher(source(), 2) as it:
        for x in it:
            if x == 3:
                break
    assert not any(t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + 1 + 2 + 1  # consumed + the one in flight + the queue + one blocked put
