"""Public kernel entry points with an explicit backend choice.

Backends: ``reference`` (kernels/reference/, readable PyTorch, fp32 math), ``triton`` (kernels/triton/, fused
kernels registered as torch.library custom ops) and ``auto``, the only value that may choose. ``auto`` takes Triton
for CUDA tensors when it is installed and the reference otherwise (on CPU the reference is the faster of the two:
benchmarks/results/kernels_cpu.json), and logs its choice once per op and device type. Asking for a backend that
cannot run raises :class:`BackendUnavailableError` instead of falling back silently: ``triton`` needs the package
installed, and for CPU tensors the interpreter (``TRITON_INTERPRET=1`` set before the first Triton call; it is how
CI checks parity without a GPU, far too slow for training). Nothing here touches CUDA at import time; Triton
itself is imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from types import ModuleType
from typing import Literal

import torch
from scalefirst_kernels.reference import jagged_attention_pooling as _ref_jap
from scalefirst_kernels.reference import plackett_luce as _ref_pl
from scalefirst_kernels.reference import softmax_ce_hvp as _ref_ce

logger = logging.getLogger(__name__)

Backend = Literal["auto", "reference", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "reference", "triton")
IMPLEMENTED: dict[str, tuple[str, ...]] = {
    "jagged_attention_pooling": ("reference", "triton"),
    "jagged_sum_pooling": ("reference",),
    "plackett_luce_loss": ("reference", "triton"),
    "softmax_ce_hvp": ("reference", "triton"),
}
"""op → the backends it has."""
TRITON_MODULES: dict[str, str] = {
    "jagged_attention_pooling": "jagged_attention_pooling",
    "plackett_luce_loss": "plackett_luce",
    "softmax_ce_hvp": "softmax_ce_hvp",
}
"""op → its module in kernels/triton/."""
_AUTO_LOGGED: set[tuple[str, str]] = set()


class BackendUnavailableError(RuntimeError):
    """The requested kernel backend cannot run here."""


# find_spec locates the package without importing it (no CUDA, no driver query).
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    return _TRITON_FOUND


def check_backend(op: str, backend: str) -> None:
    """Raise unless ``op`` can run with ``backend`` (ValueError: unknown name; BackendUnavailableError: not here).

    Cheap and side-effect free (no device query, no Triton import), so configs can be validated before anything
    is launched. Whether Triton can run on the tensors' device is checked at call time.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    if backend != "auto" and backend not in IMPLEMENTED[op]:
        raise BackendUnavailableError(
            f"{op}: backend {backend!r} is not implemented (available: {', '.join(('auto', *IMPLEMENTED[op]))})"
        )
    if backend == "triton" and not triton_installed():
        raise BackendUnavailableError(f"{op}: backend 'triton' needs the triton package, which is not installed")


def prepare(op: str, backend: str) -> None:
    """check_backend, then import the op's Triton module if it may be used, so that code compiled later with
    ``torch.compile(fullgraph=True)`` finds it loaded (Dynamo cannot trace an import)."""
    check_backend(op, backend)
    if backend in ("auto", "triton") and "triton" in IMPLEMENTED[op] and triton_installed():
        importlib.import_module(f"scalefirst_kernels.triton.{TRITON_MODULES[op]}")


def _triton(op: str, device: torch.device) -> ModuleType:
    name = f"scalefirst_kernels.triton.{TRITON_MODULES[op]}"
    # sys.modules first: traceable by Dynamo once the module is loaded (see prepare()).
    mod = sys.modules.get(name) or importlib.import_module(name)
    if device.type != "cuda" and not sys.modules["scalefirst_kernels.triton"].INTERPRETED:
        raise BackendUnavailableError(
            f"{op}: backend 'triton' on {device.type} tensors runs only under the Triton interpreter; set "
            "TRITON_INTERPRET=1 before the first Triton call (for parity checks: it is far too slow to train with)"
        )
    return mod


def _resolve(op: str, backend: str, device: torch.device) -> str:
    check_backend(op, backend)
    if backend != "auto":
        return backend
    choice = "triton" if "triton" in IMPLEMENTED[op] and device.type == "cuda" and triton_installed() else "reference"
    if (op, device.type) not in _AUTO_LOGGED:
        _AUTO_LOGGED.add((op, device.type))
        logger.info("%s: backend=auto chose %s for %s tensors", op, choice, device.type)
    return choice


def jagged_attention_pooling(
    q_BHd: torch.Tensor,
    k_LHd: torch.Tensor,
    v_LHd: torch.Tensor,
    offsets_B1: torch.Tensor,
    bias_LH: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Targeted multi-head attention pooling over jagged lists: out_b = sum_j softmax_j(q_b.k_j/sqrt(d) + bias_j) v_j.

    ``offsets_B1`` (int32 or int64, offsets[0] = 0, offsets[B] = L) delimits the lists; an empty list pools to zeros.
    Output in ``v``'s dtype, math in fp32 (see kernels/reference/jagged_attention_pooling.py).
    """
    op = "jagged_attention_pooling"
    if _resolve(op, backend, q_BHd.device) == "triton":
        return _triton(op, q_BHd.device).jagged_attention_pooling(q_BHd, k_LHd, v_LHd, offsets_B1, bias_LH)
    return _ref_jap.jagged_attention_pooling(q_BHd, k_LHd, v_LHd, offsets_B1, bias_LH)


def jagged_sum_pooling(
    values_LD: torch.Tensor, offsets_B1: torch.Tensor, *, mean: bool = False, backend: Backend = "auto"
) -> torch.Tensor:
    """Sum/mean pooling over jagged lists."""
    _resolve("jagged_sum_pooling", backend, values_LD.device)
    return _ref_jap.jagged_sum_pooling(values_LD, offsets_B1, mean=mean)


def plackett_luce_loss(
    ego_NM: torch.Tensor, order_NM: torch.Tensor, mu_M: torch.Tensor, *, backend: Backend = "auto"
) -> torch.Tensor:
    """Per-row position-weighted ListMLE: loss_n = sum_k mu_k (log sum_{j>=k} exp(s_j) - s_k), s_k =
    ego[n, order[n, k]]; ``order`` (int64, each row a permutation, best first) carries no gradient.

    Returns [N] in fp32 (the reference keeps float64 scores in float64).
    """
    op = "plackett_luce_loss"
    if _resolve(op, backend, ego_NM.device) == "triton":
        return _triton(op, ego_NM.device).plackett_luce_loss(ego_NM, order_NM, mu_M)
    return _ref_pl.plackett_luce_loss(ego_NM, order_NM, mu_M)


def softmax_ce_hvp(logits_NC: torch.Tensor, tangents_KNC: torch.Tensor, *, backend: Backend = "auto") -> torch.Tensor:
    """Softmax cross-entropy Hessian wrt the logits times K tangents: (diag(p_n) - p_n p_n^T) u_kn, [K, N, C]
    in the tangents' dtype (labels do not enter it). Used by ``scalefirst_kernels.hvp.linear_softmax_ce_hvp``."""
    op = "softmax_ce_hvp"
    if _resolve(op, backend, logits_NC.device) == "triton":
        return _triton(op, logits_NC.device).softmax_ce_hvp(logits_NC, tangents_KNC)
    return _ref_ce.softmax_ce_hvp(logits_NC, tangents_KNC)
