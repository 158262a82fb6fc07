"""Public kernel entry points with an explicit backend choice.

Backends: ``reference`` (kernels/reference/, readable PyTorch, fp32 math), ``triton`` (kernels/triton/, not written
yet) and ``auto``, the only value that may choose; it logs its choice once per op. Asking for a backend that is
not available raises :class:`BackendUnavailableError` instead of falling back silently.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from scalefirst_kernels.reference import jagged_attention_pooling as _ref_jap

logger = logging.getLogger(__name__)

Backend = Literal["auto", "reference", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "reference", "triton")
IMPLEMENTED: dict[str, tuple[str, ...]] = {
    "jagged_attention_pooling": ("reference",),
    "jagged_sum_pooling": ("reference",),
}
"""op → its backends, best first (``auto`` takes the first)."""
_AUTO_LOGGED: set[str] = set()


class BackendUnavailableError(RuntimeError):
    """The requested kernel backend cannot run here."""


def check_backend(op: str, backend: str) -> None:
    """Raise unless ``op`` can run with ``backend`` (ValueError: unknown name; BackendUnavailableError: not here).

    Cheap and side-effect free (no device query), so configs can be validated before anything is launched.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    if backend != "auto" and backend not in IMPLEMENTED[op]:
        raise BackendUnavailableError(
            f"{op}: backend {backend!r} is not implemented (available: {', '.join(('auto', *IMPLEMENTED[op]))})"
        )


def _resolve(op: str, backend: str) -> str:
    check_backend(op, backend)
    if backend == "auto":
        choice = IMPLEMENTED[op][0]
        if op not in _AUTO_LOGGED:
            _AUTO_LOGGED.add(op)
            logger.info("%s: backend=auto chose %s", op, choice)
        return choice
    return backend


def jagged_attention_pooling(
    q_BHd: torch.Tensor,
    k_LHd: torch.Tensor,
    v_LHd: torch.Tensor,
    offsets_B1: torch.Tensor,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Targeted multi-head attention pooling over jagged lists (see the reference for the math)."""
    _resolve("jagged_attention_pooling", backend)
    return _ref_jap.jagged_attention_pooling(q_BHd, k_LHd, v_LHd, offsets_B1)


def jagged_sum_pooling(
    values_LD: torch.Tensor, offsets_B1: torch.Tensor, *, mean: bool = False, backend: Backend = "auto"
) -> torch.Tensor:
    """Sum/mean pooling over jagged lists."""
    _resolve("jagged_sum_pooling", backend)
    return _ref_jap.jagged_sum_pooling(values_LD, offsets_B1, mean=mean)
