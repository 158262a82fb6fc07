"""Public kernel entry points with an explicit backend choice.

``backend="auto"`` is the only value that may choose; it logs its choice once per op. Asking for a backend that
is not available raises :class:`BackendUnavailableError` instead of falling back silently.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from scalefirst_kernels.reference import jagged_attention_pooling as _ref_jap

logger = logging.getLogger(__name__)

Backend = Literal["auto", "pytorch", "triton"]
_AUTO_LOGGED: set[str] = set()


class BackendUnavailableError(RuntimeError):
    """The requested kernel backend cannot run here."""


def _resolve(op: str, backend: str, implemented: tuple[str, ...]) -> str:
    if backend not in ("auto", "pytorch", "triton"):
        raise ValueError(f"{op}: unknown backend {backend!r}; choose auto, pytorch or triton")
    if backend == "auto":
        choice = implemented[0]
        if op not in _AUTO_LOGGED:
            _AUTO_LOGGED.add(op)
            logger.info("%s: backend=auto chose %s", op, choice)
        return choice
    if backend not in implemented:
        raise BackendUnavailableError(f"{op}: backend {backend!r} is not implemented (available: {list(implemented)})")
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
    _resolve("jagged_attention_pooling", backend, ("pytorch",))
    return _ref_jap.jagged_attention_pooling(q_BHd, k_LHd, v_LHd, offsets_B1)


def jagged_sum_pooling(
    values_LD: torch.Tensor, offsets_B1: torch.Tensor, *, mean: bool = False, backend: Backend = "auto"
) -> torch.Tensor:
    """Sum/mean pooling over jagged lists."""
    _resolve("jagged_sum_pooling", backend, ("pytorch",))
    return _ref_jap.jagged_sum_pooling(values_LD, offsets_B1, mean=mean)
