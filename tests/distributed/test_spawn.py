"""run_multiprocess: real spawned gloo ranks, results by rank, failures surfaced instead of hanging."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from framework.distributed.spawn import SpawnedProcessError, run_multiprocess

# Module-level targets: spawned interpreters import them by qualified name.


def _rank_info(offset: int, *, scale: int) -> dict[str, object]:
    return {
        "value": (dist.get_rank() + offset) * scale,
        "world": dist.get_world_size(),
        "backend": dist.get_backend(),
        "env": {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "OMP_NUM_THREADS")},
        "threads": torch.get_num_threads(),
        "tensor": torch.full((2,), float(dist.get_rank())),
    }


def _all_reduce() -> list[float]:
    t = torch.tensor([float(dist.get_rank() + 1), 10.0])
    dist.all_reduce(t)
    return t.tolist()


def _raise_on_rank1() -> int:
    if dist.get_rank() == 1:
        raise ValueError("boom from rank one")
    return dist.get_rank()


def _rank1_exits_rank0_blocks() -> None:
    if dist.get_rank() == 1:
        os._exit(3)
    # Rank 0 waits in a collective its peer will never join: the parent must not wait for it.
    dist.barrier()


def _sleep_forever() -> None:
    time.sleep(600)


def test_results_are_ordered_by_rank_with_torchrun_env() -> None:
    out = run_multiprocess(_rank_info, 2, 5, scale=10)
    assert [o["value"] for o in out] == [50, 60]
    for rank, o in enumerate(out):
        assert o["world"] == 2
        assert o["backend"] == "gloo"
        assert o["env"] == {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "OMP_NUM_THREADS": "1",
        }
        assert o["threads"] == 1
        torch.testing.assert_close(o["tensor"], torch.full((2,), float(rank)))


def test_all_reduce_sums_across_ranks() -> None:
    # (1 + 2, 10 + 10) on both ranks.
    assert run_multiprocess(_all_reduce, 2) == [[3.0, 20.0], [3.0, 20.0]]


def test_exception_in_rank1_surfaces_with_rank_and_traceback() -> None:
    with pytest.raises(SpawnedProcessError, match="rank 1 raised") as exc_info:
        run_multiprocess(_raise_on_rank1, 2)
    err = exc_info.value
    assert isinstance(err, RuntimeError)
    assert err.rank == 1 and err.exitcode is None
    msg = str(err)
    assert "ValueError: boom from rank one" in msg
    assert "Traceback (most recent call last)" in msg
    assert "_raise_on_rank1" in msg  # the child's frame, not just the message


def test_rank_dying_without_report_names_exitcode_and_does_not_hang() -> None:
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 1 exited without reporting a result: exitcode 3") as exc_info:
        run_multiprocess(_rank1_exits_rank0_blocks, 2, timeout_s=120)
    assert exc_info.value.rank == 1 and exc_info.value.exitcode == 3
    # Detected from the exit code, long before either the run or the gloo collective timeout.
    assert time.monotonic() - start < 60


def test_timeout_terminates_ranks_and_raises() -> None:
    with pytest.raises(RuntimeError, match=r"timed out after 2(\.0)?s: ranks \[0\] were still running"):
        run_multiprocess(_sleep_forever, 1, timeout_s=2)


def test_unpicklable_fn_is_rejected_up_front() -> None:
    with pytest.raises(TypeError, match="module-level fn"):
        run_multiprocess(lambda: 0, 2)


def test_invalid_world_size() -> None:
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        run_multiprocess(_all_reduce, 0)
