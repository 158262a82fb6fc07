"""Logging of a training process: a short console, everything in ``<run_dir>/log.txt``.

Console (stderr, next to the rank-0 progress bar):

* the project's own loggers (:data:`PROJECT_LOGGERS`) at INFO on rank 0;
* warnings and errors of every logger on every rank, except :data:`KNOWN_HARMLESS` ones;
* nothing else: third-party INFO (TorchRec planner statistics, fbgemm's "Successfully loaded" lines and TBE
  settings, DeepSpeed, torch.distributed) goes to the file only.

``verbose=True`` restores the full console: INFO of every logger on rank 0, every warning on every rank.

File (``<run_dir>/log.txt``, appended to by all ranks, each line prefixed with its rank): every record of every
logger at INFO and above, the project's DEBUG records (e.g. the full sharding plan), and Python warnings
(``logging.captureWarnings``). Appending keeps the logs of resumed runs in one file; lines of different ranks
interleave in time order (each record is written by one ``write``; on a network file system shared by several
nodes lines may interleave less cleanly).

Libraries that install their own stream handlers and stop propagation (torch's ``torch._logging``, DeepSpeed's
``DeepSpeed`` logger) are routed through the root logger by :func:`adopt_library_loggers`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

PROJECT_LOGGERS = ("framework", "launch", "scalefirst_kernels", "__main__")
"""Logger name prefixes of this project."""
LOG_FILE = "log.txt"

KNOWN_HARMLESS: tuple[tuple[str, str, str], ...] = (
    # (logger, message regex, why it is harmless)
    ("py.warnings", r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
     "framework/distributed/collectives.py: the suggested replacement is private (_functional_collectives)"),
    ("py.warnings", r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
     "called inside torch's autograd all_gather and DeepSpeed, not by us"),
    ("py.warnings", r"HeuristicalStorageReservation is known to cause issues",
     "TorchRec FutureWarning about dry-run planning, which we never do"),
    ("py.warnings", r"`broadcast_buffers` is deprecated",
     "TorchRec's DMP passes a deprecated argument to DDP; nothing for us to change"),
    ("py.warnings", r"Please use DTensor instead and we are deprecating ShardedTensor",
     "TorchRec's keyed optimizer still uses ShardedTensor"),
    ("torch.fx._symbolic_trace", r"is_fx_tracing will return true for both",
     "torch deprecation notice triggered inside TorchRec"),
    ("torchrec.distributed.planner.types", r"The topology was constructed directly",
     "we build the Topology from the torchrun environment on purpose (framework/distributed/torchrec_sharding.py)"),
    ("torchrec.distributed.planner.storage_reservations", r"There is a known issue with TorchRec's dense tensor",
     "about dry-run planning, which we never do"),
    ("py.warnings", r"`is_gradient_checkpointing` is deprecated",
     "PEFT 0.21 reads the deprecated transformers attribute when it wraps a model in LoRA"),
)  # fmt: skip
"""Warnings kept off the console (they still go to log.txt): known, understood and not ours to fix."""
_KNOWN = [(name, re.compile(pattern)) for name, pattern, _ in KNOWN_HARMLESS]

_active: RunLogging | None = None


def _is_project(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PROJECT_LOGGERS)


def is_known_harmless(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return any(record.name == name and pattern.search(message) for name, pattern in _KNOWN)


class _ConsoleFilter(logging.Filter):
    def __init__(self, rank: int, verbose: bool) -> None:
        super().__init__()
        self.rank = rank
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return self.verbose or not is_known_harmless(record)
        if record.levelno < logging.INFO or self.rank != 0:
            return False
        return self.verbose or _is_project(record.name)


def adopt_library_loggers() -> None:
    """Route libraries' own console handlers through the root logger (and so to log.txt and the console filter).

    No-op unless :class:`RunLogging` is active. Call again after importing a library that sets its loggers up on
    import (done by framework/distributed/deepspeed_engine.py after ``import deepspeed``).
    """
    if _active is None:
        return
    std_streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or _is_project(name):
            continue
        streams = [h for h in logger.handlers if type(h) is logging.StreamHandler and h.stream in std_streams]
        if not streams:
            continue
        for handler in streams:
            logger.removeHandler(handler)
        logger.propagate = True  # levels stay the library's own: routed, not made more verbose


class _LineLogger(io.TextIOBase):
    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._pending = ""

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            if line.strip():
                self._logger.info("%s", line)
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            self._logger.info("%s", self._pending)
        self._pending = ""


@contextlib.contextmanager
def prints_to_log(logger_name: str) -> Iterator[None]:
    """Turn ``print()`` output inside the block into INFO records of ``logger_name`` (while :class:`RunLogging`
    is active; otherwise a no-op). For libraries that print progress themselves (DeepSpeed prints "... built
    successfully" once per rank); output written to the file descriptor by C++ or subprocesses is not caught."""
    if _active is None:
        yield
        return
    writer = _LineLogger(logging.getLogger(logger_name))
    with contextlib.redirect_stdout(writer):
        yield
    writer.flush()


class RunLogging:
    """Root-logger handlers for one training process; use as a context manager (restores the previous state).

    Example::

        with RunLogging(rank=process_rank(), verbose=False) as logs:
            cfg = load_job_config(path, overrides)
            logs.to_file(cfg.train.run_dir)
            train(cfg)
    """

    def __init__(self, rank: int, verbose: bool = False) -> None:
        self.rank = rank
        self.verbose = verbose
        self.path: Path | None = None
        self._root = logging.getLogger()
        self._saved_level = self._root.level
        self._saved_project_levels = {name: logging.getLogger(name).level for name in PROJECT_LOGGERS}
        self._handlers: list[logging.Handler] = []

    def __enter__(self) -> RunLogging:
        global _active
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter(f"[rank{self.rank}] %(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        console.addFilter(_ConsoleFilter(self.rank, self.verbose))
        self._add(console)
        self._root.setLevel(logging.INFO)
        for name in PROJECT_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)  # DEBUG reaches log.txt only (console filter)
        logging.captureWarnings(True)
        _active = self
        adopt_library_loggers()
        return self

    def to_file(self, run_dir: str | Path) -> Path:
        """Also append every record to ``run_dir/log.txt`` (created by every rank: it may run before rank 0
        creates the run directory)."""
        path = Path(run_dir) / LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setFormatter(
            logging.Formatter(f"[rank{self.rank}] %(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
        )
        self._add(handler)
        self.path = path
        return path

    def _add(self, handler: logging.Handler) -> None:
        self._root.addHandler(handler)
        self._handlers.append(handler)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _active
        if exc is not None and not isinstance(exc, SystemExit | KeyboardInterrupt):
            # Into log.txt as well: the console copy of the traceback is printed by the interpreter.
            logging.getLogger("launch").debug("run failed", exc_info=(exc_type, exc, tb))
        logging.captureWarnings(False)
        for handler in self._handlers:
            self._root.removeHandler(handler)
            handler.close()
        self._root.setLevel(self._saved_level)
        for name, level in self._saved_project_levels.items():
            logging.getLogger(name).setLevel(level)
        _active = None
