"""Helpers shared by trainer families: run directory, progress bar, scalar logging, results JSON."""

from __future__ import annotations

import logging
import math
import os
import platform
import queue
import resource
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm import tqdm

from framework.config import load_job_config, save_config
from framework.io import write_json_atomic

logger = logging.getLogger(__name__)
T = TypeVar("T")
_DONE = object()


REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "benchmarks" / "results"
"""Where benchmarks keep the results the README quotes; only a clean checkout may write there."""


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def dirty_files(cwd: str | Path | None = None) -> list[str] | None:
    """Tracked files that differ from HEAD (None outside a git checkout). Changes under benchmarks/results/ do
    not count: they are outputs, and a series of benchmarks run from one commit rewrites them one by one."""
    status = _git(["status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"],
                  Path(cwd) if cwd else REPO)  # fmt: skip
    return None if status is None else [line[3:] for line in status.splitlines() if line.strip()]


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD commit of the repository this code runs from, suffixed ``-dirty`` when tracked files (other than
    benchmarks/results/) differ from it; None outside a git checkout: results name exactly the code that produced
    them."""
    root = Path(cwd) if cwd else REPO
    head = (_git(["describe", "--always", "--abbrev=40"], root) or "").strip()
    dirty = dirty_files(root)
    if not head or dirty is None:
        return None
    return f"{head}-dirty" if dirty else head


class DirtyTreeError(RuntimeError):
    """A benchmark result would be written under benchmarks/results/ from code that is not a commit."""


def check_results_path(out: str | Path, repo: str | Path = REPO) -> None:
    """Refuse (:class:`DirtyTreeError`) a result path under ``repo``/benchmarks/results/ unless ``repo`` is clean.

    Call it before a benchmark starts (and :func:`write_result` checks again): results there are quoted by the
    README and must come from a commit. Any other ``--out`` is always allowed (exploration, smoke tests).
    """
    if not Path(out).resolve().is_relative_to((Path(repo) / RESULTS_DIR.relative_to(REPO)).resolve()):
        return
    dirty = dirty_files(repo)
    if dirty is None:
        raise DirtyTreeError(f"refusing to write {out}: not a git checkout, so the result would name no commit")
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" (+{len(dirty) - 5} more)" if len(dirty) > 5 else "")
        raise DirtyTreeError(
            f"refusing to write {out}: the checkout has uncommitted changes ({shown}); commit them and rerun, "
            "or pass --out outside benchmarks/results/"
        )


def check_results_or_exit(parser: Any, *outs: str | Path) -> None:
    """:func:`check_results_path` for each of a benchmark's outputs before it starts; a dirty tree ends the script
    through ``parser.error`` (usage + the reason, exit status 2)."""
    try:
        for out in outs:
            check_results_path(out)
    except DirtyTreeError as e:
        parser.error(str(e))


def write_result(out: str | Path, payload: Mapping[str, Any]) -> None:
    """:func:`check_results_path`, then :func:`write_json_atomic`: how benchmarks write their JSON."""
    check_results_path(out)
    write_json_atomic(out, payload)


def open_run_dir(cfg: Any, is_main: bool) -> Path:
    """The job's ``cfg.train.run_dir``; the main rank creates it and writes the resolved ``config.yaml`` there."""
    run_dir = Path(cfg.train.run_dir)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    return run_dir


def finished_run(run_dir: str | Path, family: str, final_model: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """The config and final fp32 state dict (``run_dir/final_model``) of a finished run of ``family``.

    Raises:
        FileNotFoundError: config.yaml or the final model is missing (names the file).
        ValueError: the run belongs to another family.
    """
    run_dir = Path(run_dir)
    config, weights = run_dir / "config.yaml", run_dir / final_model
    for path in (config, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run_dir} the run_dir of a finished {family} run?")
    cfg = load_job_config(config)
    if cfg.family != family:
        raise ValueError(f"{config} is a {cfg.family!r} run, not a {family} run")
    return cfg, torch.load(weights, map_location="cpu", weights_only=True)


def environment_info() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


class ScalarLogger:
    """TensorBoard scalars on rank 0; a no-op elsewhere or when disabled."""

    def __init__(self, log_dir: str | Path, enabled: bool) -> None:
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        if self._writer is not None:
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


class Progress:
    """A tqdm bar on rank 0 showing global examples/s; silent on other ranks."""

    def __init__(self, total: int, initial: int, examples_per_step: int, enabled: bool, desc: str) -> None:
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True) if enabled else None
        self._examples_per_step = examples_per_step
        self._t0 = time.perf_counter()
        self._steps = 0

    def update(self, **postfix: float) -> None:
        self._steps += 1
        if self._bar is not None:
            rate = self.examples_per_second
            self._bar.set_postfix(
                {"ex/s": f"{rate:,.0f}", **{k: f"{v:.4f}" for k, v in postfix.items()}}, refresh=False
            )
            self._bar.update(1)

    @property
    def examples_per_second(self) -> float:
        elapsed = time.perf_counter() - self._t0
        return self._steps * self._examples_per_step / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Prefetcher(Iterator[T]):
    """Runs an iterator ``depth`` items ahead in a background thread, same order, errors re-raised in the caller.

    Batch construction is numpy-heavy (it releases the GIL), so it fills the time a rank otherwise spends blocked
    in collectives. ``depth=0`` iterates on the calling thread. Use as a context manager, or call ``close()``
    when leaving the loop early, so the worker stops.
    """

    def __init__(self, source: Iterator[T], depth: int) -> None:
        self._source = source
        self._depth = depth
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._work, name="batch-prefetch", daemon=True)
            self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(e)

    def __next__(self) -> T:
        if self._thread is None:
            return next(self._source)
        item = self._queue.get()
        if item is _DONE:
            self._queue.put(_DONE)  # keep answering StopIteration
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cpu_model() -> str:
    """The CPU's model name (for benchmark records)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_seconds() -> tuple[float, float, float]:
    """(wall, machine-wide busy CPU s, CPU s of this process and its reaped children): pass to :func:`others_cores`."""
    try:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        busy = math.nan
    own = sum(
        r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )
    return time.perf_counter(), busy, own


def others_cores(since: tuple[float, float, float]) -> float:
    """Average cores used by other processes since ``since`` (a :func:`cpu_seconds` reading): benchmark noise."""
    wall, busy, own = (b - a for a, b in zip(since, cpu_seconds(), strict=True))
    return max(0.0, (busy - own) / wall) if wall > 0 else math.nan


def result_header(benchmark: str) -> dict[str, Any]:
    """The fields every benchmark result starts with: name, date, device, git commit, environment, command line."""
    import datetime
    import sys

    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"cpu: {cpu_model()}",
        "git_commit": git_commit(REPO),
        "env": environment_info(),
        "command": [Path(sys.executable).name, *sys.argv],
    }
