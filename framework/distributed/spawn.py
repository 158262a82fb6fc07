"""Run a function on N real local processes joined by a gloo process group (TorchRec-style multi-process tests).

Every 2-rank test in the project goes through :func:`run_multiprocess`: it exercises the same
``init_distributed`` path as production (env vars -> :mod:`framework.distributed.env`), so a test passes only if
the code works with real collectives between real processes, not a mocked world.

Example::

    def _all_reduce_sum() -> float:  # module level: spawned processes import it by name
        t = torch.ones(1)
        dist.all_reduce(t)
        return t.item()

    assert run_multiprocess(_all_reduce_sum, 2) == [2.0, 2.0]
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import torch

from framework.distributed.env import destroy_distributed, free_port, init_distributed, set_torchrun_env

# Poll interval of the parent's supervision loop: short enough that a failure surfaces promptly, long enough not to
# steal a core from the ranks on a 2-core machine.
_POLL_S = 0.05
# Grace given to a terminated rank before it is SIGKILLed.
_TERMINATE_GRACE_S = 5.0

_OK = "ok"
_ERROR = "error"


class SpawnedProcessError(RuntimeError):
    """A rank started by :func:`run_multiprocess` raised, died without reporting, or did not finish in time.

    Attributes:
        rank: The rank blamed: the lowest rank that died without reporting if any (its peers' errors are usually
            consequences of its death), else the lowest rank that raised, else (timeout) the lowest unfinished rank.
        exitcode: That rank's exit code when it died without reporting (negative: killed by that signal);
            ``None`` when it raised an exception or was still running.
    """

    def __init__(self, message: str, rank: int, exitcode: int | None) -> None:
        super().__init__(message)
        self.rank = rank
        self.exitcode = exitcode


def _describe_exitcode(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"exitcode {exitcode} (killed by {name})"
    return f"exitcode {exitcode}"


def _worker(
    rank: int,
    world_size: int,
    port: int,
    timeout_s: float,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    result_queue: Any,
) -> None:
    """Body of one spawned rank: set the torchrun-style environment, init gloo, run ``fn``, report back."""
    set_torchrun_env(rank, world_size, port)
    os.environ["OMP_NUM_THREADS"] = "1"
    # torch was already imported while unpickling this process object, so the env var alone is too late for this
    # process's intra-op pool; without this, N ranks x N threads oversubscribe the 2-core machine.
    torch.set_num_threads(1)
    try:
        init_distributed("cpu", timeout_s=timeout_s)
        result = fn(*args, **kwargs)
        # Pickled here rather than by the queue's feeder thread: an unpicklable result then becomes a reported error
        # instead of a traceback printed by a background thread and a rank that "exits without reporting". Plain
        # pickle (not torch's ForkingPickler) also copies tensors instead of sharing memory that dies with this rank.
        payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        # Torn down before reporting success: once every rank has reported, the parent stops the ranks instead of
        # waiting ~1 s each for interpreter shutdown, so nothing may be left to do after the report.
        destroy_distributed()
    except BaseException:  # noqa: BLE001 - everything, SystemExit and KeyboardInterrupt included, goes to the parent
        _flush_std_streams()
        result_queue.put((rank, _ERROR, traceback.format_exc()))
        try:
            destroy_distributed()
        except Exception:  # noqa: BLE001 - the failure is already reported; a teardown error must not mask it
            traceback.print_exc(file=sys.stderr)
    else:
        _flush_std_streams()
        result_queue.put((rank, _OK, payload))


def _flush_std_streams() -> None:
    # The parent may terminate this rank right after its report: output printed by fn must not die in a buffer.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _stop(procs: list[BaseProcess]) -> None:
    """Terminate every rank still alive, escalating to SIGKILL, so a failed run never leaves ranks behind."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + _TERMINATE_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def run_multiprocess(
    fn: Callable[..., Any],
    world_size: int = 2,
    *args: Any,
    timeout_s: float = 300,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` local processes sharing a gloo process group.

    Each process is started with the multiprocessing "spawn" context (fork is unsafe once torch has started threads),
    gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT and OMP_NUM_THREADS=1,
    calls ``init_distributed("cpu")``, runs ``fn``, destroys the process group and sends the return value back.

    ``fn`` must be picklable by reference, i.e. a function defined at module level of an importable module (not a
    lambda, a closure, a nested function or a function defined in an interactive ``__main__``): the spawned
    interpreters import it by its qualified name. ``args``, ``kwargs`` and the return value must be picklable too.
    ``fn`` cannot receive keyword arguments named ``world_size`` or ``timeout_s``: those belong to this helper.

    Args:
        fn: Module-level function run on every rank; it can query its rank with ``torch.distributed.get_rank()``.
        world_size: Number of processes (ranks).
        *args: Positional arguments passed to ``fn`` on every rank.
        timeout_s: Wall-clock limit for the whole run, process start-up included. Also used as the process group's
            collective timeout, so a rank stuck in a collective fails on its own rather than hanging.
        **kwargs: Keyword arguments passed to ``fn`` on every rank.

    Returns:
        The return values of ``fn``, ordered by rank.

    Raises:
        ValueError: ``world_size`` < 1 or ``timeout_s`` <= 0.
        TypeError: ``fn``, ``args`` or ``kwargs`` cannot be pickled (e.g. ``fn`` is a lambda or a local function).
        SpawnedProcessError: (a ``RuntimeError``) a rank raised (the message holds its rank and full traceback),
            died without reporting (the message names its rank and exit code), or the run exceeded ``timeout_s``.
            The other ranks are terminated before it is raised.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    try:
        pickle.dumps((fn, args, kwargs))
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        # Checked up front: the same failure inside Process.start() names neither fn nor the fix.
        raise TypeError(
            f"run_multiprocess needs a picklable, module-level fn and picklable arguments; got fn={fn!r}: {e}"
        ) from e

    ctx = mp.get_context("spawn")
    result_queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(rank, world_size, port, timeout_s, fn, args, kwargs, result_queue),
            name=f"run_multiprocess-rank{rank}",
            # Not daemonic: fn may start processes of its own (DataLoader workers), which daemons may not. Ranks are
            # stopped in `finally` below; only a SIGKILLed parent leaves them to end on their own (fn returns, or
            # a collective hits timeout_s).
            daemon=False,
        )
        for rank in range(world_size)
    ]
    deadline = time.monotonic() + timeout_s
    results: dict[int, Any] = {}
    errors: dict[int, str] = {}  # rank -> reported traceback
    try:
        for p in procs:
            p.start()
        dead_silent: dict[int, int] = {}  # rank -> exitcode, for ranks that exited without reporting
        while len(results) < world_size and not errors and not dead_silent:
            try:
                rank, status, payload = result_queue.get(timeout=_POLL_S)
            except queue.Empty:
                # A rank's report is flushed to the pipe before that rank exits, so re-check the queue before
                # concluding that a dead rank never reported.
                exited = {r: p.exitcode for r, p in enumerate(procs) if r not in results and p.exitcode is not None}
                if exited:
                    _drain(result_queue, results, errors)
                    dead_silent = {r: c for r, c in exited.items() if r not in results and r not in errors}
                elif time.monotonic() > deadline:
                    break
                continue
            _record(rank, status, payload, results, errors)

        if len(results) == world_size:
            # Every rank has torn down its process group and flushed its output before reporting; the `finally`
            # below only spares waiting for their interpreter shutdown.
            return [results[r] for r in range(world_size)]

        # Failure: pick up whatever other ranks managed to report, then stop everyone.
        _drain(result_queue, results, errors)
        for r, p in enumerate(procs):
            if r not in results and r not in errors and p.exitcode is not None:
                dead_silent.setdefault(r, p.exitcode)
        pending = [r for r in range(world_size) if r not in results and r not in errors and r not in dead_silent]
        # Built before `finally` stops the ranks, so that `pending` reflects ranks that were really still running.
        raise _failure(errors, dead_silent, pending, timeout_s)
    finally:
        _stop(procs)
        result_queue.close()
        result_queue.cancel_join_thread()


def _record(rank: int, status: str, payload: Any, results: dict[int, Any], errors: dict[int, str]) -> None:
    if status == _OK:
        results[rank] = pickle.loads(payload)
    else:
        errors[rank] = payload


def _drain(result_queue: Any, results: dict[int, Any], errors: dict[int, str]) -> None:
    while True:
        try:
            rank, status, payload = result_queue.get(timeout=_POLL_S)
        except queue.Empty:
            return
        _record(rank, status, payload, results, errors)


def _failure(
    errors: dict[int, str],
    dead_silent: dict[int, int],
    pending: list[int],
    timeout_s: float,
) -> SpawnedProcessError:
    """One exception describing every failed rank; the rank listed first is the one blamed."""
    # A rank that died without reporting (os._exit, segfault, OOM kill) is blamed first: peers blocked in a
    # collective with it then raise connection errors that are consequences, not causes.
    parts: list[str] = []
    for r in sorted(dead_silent):
        parts.append(f"rank {r} exited without reporting a result: {_describe_exitcode(dead_silent[r])}")
    for r in sorted(errors):
        parts.append(f"rank {r} raised an exception:\n{errors[r].rstrip()}")
    if errors or dead_silent:
        if dead_silent:
            blamed = min(dead_silent)
            exitcode: int | None = dead_silent[blamed]
        else:
            blamed, exitcode = min(errors), None
        if pending:
            parts.append(f"ranks {pending} were still running and have been terminated")
        return SpawnedProcessError("run_multiprocess failed:\n" + "\n\n".join(parts), blamed, exitcode)
    return SpawnedProcessError(
        f"run_multiprocess timed out after {timeout_s}s: ranks {pending} were still running (exitcode None) and "
        "have been terminated",
        min(pending),
        None,
    )
