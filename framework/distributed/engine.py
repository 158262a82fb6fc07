"""Training engines: one interface over DeepSpeed ZeRO 0-3 and torch DDP, with world-size-agnostic checkpoints.

The trainer codes against :class:`Engine` and gets one from
:func:`framework.distributed.engine_factory.build_engine`, which picks the backend named by
``EngineConfig.backend``: ``deepspeed`` (:mod:`framework.distributed.deepspeed_engine`, the only module that imports
DeepSpeed) or ``ddp`` (:mod:`framework.distributed.ddp_engine`, plain ``DistributedDataParallel`` + AdamW, the
comparison baseline). Both share the optimizer parameter groups (:func:`param_groups`), the learning-rate schedule
(:func:`lr_multiplier`, a ``LambdaLR`` stepped once per optimizer step) and the checkpoint format.

Usage (every rank, after :func:`framework.distributed.env.init_distributed`)::

    engine = build_engine(model, cfg.engine, cfg.optim, micro_batch_size=64, max_steps=10_000, env=env)
    client_state = engine.load(run_dir / "checkpoints")          # None: nothing loaded (or another world size)
    while engine.global_step < max_steps:
        img, txt, scale = engine(images, tokens, eot_index)      # floating outputs come back in fp32
        engine.backward(loss_fn(gather_features(img), gather_features(txt), scale))
        if engine.step() and engine.global_step % 1000 == 0:     # True at accumulation boundaries only
            engine.save(run_dir / "checkpoints", {"data": loader_state})

Checkpoint layout (``root/step_XXXXXXXX``, committed by atomic rename, ``keep`` newest kept; see
:class:`framework.checkpoint.dcp.Checkpointer`)::

    step_00000400/
        .metadata  __<rank>_0.distcp    torch.distributed.checkpoint files holding
            model.<param>               full fp32 master value, original shape (each tensor written by one rank)
            optim.exp_avg.<param>       full AdamW first moment  (absent when no optimizer step was taken yet)
            optim.exp_avg_sq.<param>    full AdamW second moment
            buffers.<buffer>            rank 0's persistent buffers (BatchNorm running statistics)
            lr_scheduler                LambdaLR state (rank 0)
            grad_scaler                 fp16 loss-scaler state (fp16 only)
            client_state.rank<R>        what rank R passed to ``save`` (torch.save bytes)
        meta.json                       step, adam_step, world_size, backend, zero_stage, precision, batch sizes,
                                        parameter names and shapes, format version

Why consolidated: DeepSpeed's own checkpoint is a set of per-rank flat partitions; loading it at another world size
takes its elastic path (ZeRO-1/2 only) or an offline universal-checkpoint conversion, and neither crosses ZeRO stages
or backends. Here every parameter and AdamW moment is stored whole, by name, so any world size, ZeRO stage or
backend loads any checkpoint: each rank reads the full tensors and keeps its own partition. The price is that
``save`` gathers each tensor (one collective per parameter and moment). ``load`` streams: it reads the parameters
in chunks of at most ``load_chunk_bytes`` (default 256 MiB) of full tensors, hands each chunk to the backend (which
keeps its rank's partition) and frees it before reading the next, so no rank ever holds the full model and its
moments in host memory; every rank still reads every tensor once from storage.

Frozen parameters (``requires_grad=False``: a LoRA base model) are not in checkpoints (meta.json lists them under
``frozen``): they come from wherever the model was built from, and :meth:`Engine.consolidated_state_dict` includes
them (gathered under ZeRO-3), so a merged export sees the whole model.
"""

from __future__ import annotations

import io
import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from framework.checkpoint.dcp import Checkpointer
from framework.config.schema import ClipOptimConfig, EngineConfig
from framework.distributed.env import DistEnv

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "scalefirst-engine-v1"
"""``meta.json["format"]`` of engine checkpoints; bumped on incompatible layout changes."""

DEFAULT_LOAD_CHUNK_BYTES = 256 * 2**20
"""Most bytes of full (unpartitioned) checkpoint tensors a rank holds at once while loading (see ``load``)."""

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)
_STEP_DIR = re.compile(r"^step_\d{8}(\.partial)?$")


@runtime_checkable
class Engine(Protocol):
    """What a trainer needs from a data-parallel training backend.

    ``module`` is the unwrapped model (for evaluation and export). Under ZeRO-3 its parameters are partitioned
    (empty outside a forward): read them inside :meth:`gathered_params` or via :meth:`consolidated_state_dict`.
    """

    module: nn.Module
    rank: int
    world_size: int
    device: torch.device
    grad_accum_steps: int
    """Micro-batches per optimizer step (``engine.grad_accum_steps``)."""

    @property
    def global_step(self) -> int:
        """Optimizer steps taken (accumulation boundaries passed), restored by :meth:`load`."""
        ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Forward of the wrapped model; mixed precision is applied inside and floating outputs return in fp32."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss, scaled by 1/grad_accum_steps (as DeepSpeed does)."""
        ...

    def step(self) -> bool:
        """Call after every micro-batch. At an accumulation boundary: clip, optimizer step, LR schedule step, zero
        gradients, and return True; otherwise return False."""
        ...

    def lr(self) -> float:
        """Learning rate the next optimizer step uses (first parameter group)."""
        ...

    def train(self) -> None: ...

    def eval(self) -> None: ...

    def gathered_params(self) -> AbstractContextManager[None]:
        """Context in which ``module``'s parameters are whole on every rank (a no-op below ZeRO-3)."""
        ...

    def clamp_param_(self, name: str, min: float | None = None, max: float | None = None) -> bool:
        """Collective. Clamp parameter ``name`` of ``module`` in place to [``min``, ``max``]: the model's copy and the
        fp32 master the optimizer steps (ZeRO-1/2/3 keep it apart, partitioned). Call at an accumulation boundary,
        e.g. right after :meth:`step` returned True. Returns whether anything changed (the same on every rank)."""
        ...

    def save(self, root: str | Path, client_state: Any, extra_meta: dict[str, Any] | None = None) -> Path:
        """Collective. Commit ``root/step_{global_step:08d}`` atomically with this rank's ``client_state``
        (and ``extra_meta`` in meta.json)."""
        ...

    def load(self, root_or_dir: str | Path) -> Any | None:
        """Collective. Restore the newest committed checkpoint under ``root_or_dir`` (or that checkpoint directory);
        return this rank's client state (None at another world size, or when nothing was loaded)."""
        ...

    def consolidated_state_dict(self) -> dict[str, torch.Tensor]:
        """Collective. The full fp32 ``module.state_dict()`` on every rank (rank 0's buffers)."""
        ...


# ----------------------------------------------------------------------------------------- optimizer pieces


def param_groups(
    model: nn.Module, weight_decay: float, group_lrs: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """AdamW parameter groups: decoupled weight decay on weight matrices/kernels, none on gains and biases.

    Not decayed: parameters with fewer than 2 dimensions, biases, every parameter of a normalization layer
    (BatchNorm/LayerNorm/GroupNorm/RMSNorm) and the CLIP temperature ``logit_scale``. Frozen parameters
    (``requires_grad=False``) are left out. Empty groups are omitted.

    ``group_lrs`` maps a parameter-name substring to its own peak learning rate (the first matching key wins; e.g.
    ``{"multi_modal_projector": 2e-5}``): those parameters form groups ``decay.<key>`` / ``no_decay.<key>`` with
    ``"lr"`` set; the others use the optimizer's default lr. Every group follows the same LR schedule.

    Example::

        >>> groups = param_groups(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), 0.1)
        >>> [(g["name"], len(g["params"]), g["weight_decay"]) for g in groups]
        [('decay', 1, 0.1), ('no_decay', 3, 0.0)]
    """
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}
    group_lrs = dict(group_lrs or {})
    groups: dict[tuple[bool, str | None], list[nn.Parameter]] = {
        (d, k): [] for k in (None, *group_lrs) for d in (True, False)
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        exempt = p.ndim < 2 or leaf == "bias" or leaf == "logit_scale" or id(p) in norm_params
        key = next((k for k in group_lrs if k in name), None)
        groups[(not exempt, key)].append(p)
    out = []
    for (decayed, key), params in groups.items():
        if not params:
            continue
        group = {"params": params, "weight_decay": weight_decay if decayed else 0.0,
                 "name": ("decay" if decayed else "no_decay") + (f".{key}" if key else "")}  # fmt: skip
        if key is not None:
            group["lr"] = group_lrs[key]
        out.append(group)
    return out


def build_optimizer(
    model: nn.Module, optim_cfg: ClipOptimConfig, group_lrs: Mapping[str, float] | None = None
) -> torch.optim.AdamW:
    """torch AdamW over :func:`param_groups` with the configured peak LR (``group_lrs`` for some), betas, epsilon."""
    beta1, beta2 = optim_cfg.betas
    groups = param_groups(model, optim_cfg.weight_decay, group_lrs)
    return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=(beta1, beta2), eps=optim_cfg.eps)


def lr_multiplier(step: int, *, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """Fraction of the peak learning rate used by the optimizer step taken after ``step`` steps (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (never 0, so the first step moves),
    then ``constant`` 1, or ``cosine`` ``0.5 * (1 + cos(pi * progress))`` with ``progress`` going from 0 right after
    warm-up to 1 at ``max_steps`` (and clamped there: 0 past the end).

    Example::

        >>> [round(lr_multiplier(s, warmup_steps=2, max_steps=6, schedule="cosine"), 3) for s in range(7)]
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {schedule!r}")
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: ClipOptimConfig, max_steps: int) -> LambdaLR:
    """``LambdaLR`` of :func:`lr_multiplier`; step it once per optimizer step (both engines do)."""
    fn = partial(lr_multiplier, warmup_steps=optim_cfg.warmup_steps, max_steps=max_steps, schedule=optim_cfg.schedule)
    return LambdaLR(optimizer, fn)


def adam_step_count(optimizer: torch.optim.Optimizer) -> int:
    """AdamW's step count, 0 before its first update.

    Raises:
        RuntimeError: parameters were updated different numbers of times (some received no gradient in some
            steps); the engine checkpoint stores one count.
    """
    steps = {float(s["step"]) for s in optimizer.state.values() if "step" in s}
    if len(steps) > 1:
        raise RuntimeError(
            f"AdamW step counts differ between parameters ({sorted(steps)}): parameters that miss updates (no "
            "gradient in some steps) are not supported by engine checkpoints"
        )
    return int(steps.pop()) if steps else 0


def init_adam_state(optimizer: torch.optim.Optimizer, adam_step: int, params: list[torch.Tensor] | None = None) -> None:
    """Create (or reset) torch AdamW's state of ``params`` (default: those in its parameter groups) with zero moments
    and step count ``adam_step``, in the layout its ``step()`` creates lazily, so that moments can be copied in
    before the first update."""
    if params is None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
    # torch keeps the step as a CPU scalar tensor of this dtype (float64 only under a float64 default dtype).
    step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    for p in params:
        optimizer.state[p] = {
            "step": torch.tensor(float(adam_step), dtype=step_dtype),
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }


# ------------------------------------------------------------------------------------ shared implementation


def to_fp32(out: Any) -> Any:
    """Cast the floating-point tensors of a (nested tuple/list/dict) forward output to fp32.

    Under mixed precision the loss (logits, log-softmax over the global batch) is then computed in fp32.
    """
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # namedtuple
        return type(out)(*(to_fp32(o) for o in out))
    if isinstance(out, tuple | list):
        return type(out)(to_fp32(o) for o in out)
    if isinstance(out, dict):
        return {k: to_fp32(v) for k, v in out.items()}
    return out


def _full_cpu(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A detached fp32 CPU copy of a full tensor in the model's own ``shape`` (never a view of live state)."""
    return t.detach().reshape(shape).float().cpu().clone()


def replicated_param_state(
    param: nn.Parameter, optimizer: torch.optim.Optimizer, with_optim: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(value, exp_avg, exp_avg_sq) of an unpartitioned parameter stepped by a torch AdamW (DDP, ZeRO-0)."""
    if not with_optim:
        return param.detach(), None, None
    state = optimizer.state[param]
    return param.detach(), state["exp_avg"], state["exp_avg_sq"]


def load_replicated_param_state(
    param: nn.Parameter,
    optimizer: torch.optim.Optimizer,
    value: torch.Tensor,
    exp_avg: torch.Tensor | None,
    exp_avg_sq: torch.Tensor | None,
) -> None:
    """Copy full tensors into an unpartitioned parameter and its torch AdamW moments (DDP, ZeRO-0)."""
    with torch.no_grad():
        param.copy_(value.reshape(param.shape))
        if exp_avg is not None and exp_avg_sq is not None:
            state = optimizer.state[param]
            state["exp_avg"].copy_(exp_avg.reshape(param.shape))
            state["exp_avg_sq"].copy_(exp_avg_sq.reshape(param.shape))


def _pack(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unpack(data: bytes) -> Any:
    # weights_only: a checkpoint is data, never code to run; client state is plain data (see Engine.save).
    return torch.load(io.BytesIO(data), weights_only=True)


def _owners(shapes: dict[str, tuple[int, ...]], world_size: int) -> dict[str, int]:
    """Which rank writes each parameter (and its moments): greedy by size, so every rank writes a similar share."""
    load = [0] * world_size
    owners = {}
    for name, shape in shapes.items():
        rank = min(range(world_size), key=lambda r: load[r])
        owners[name] = rank
        load[rank] += math.prod(shape)
    return owners


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def load_chunks(shapes: dict[str, tuple[int, ...]], copies: int, budget_bytes: int) -> list[list[str]]:
    """Parameter names in consecutive chunks whose full fp32 tensors (``copies`` per parameter: value and the two
    AdamW moments) fit ``budget_bytes``; a parameter larger than the budget is a chunk of its own.

    Example::

        >>> load_chunks({"a": (4,), "b": (4,), "c": (16,)}, 1, 32)
        [['a', 'b'], ['c']]
    """
    chunks: list[list[str]] = []
    size = 0
    for name, shape in shapes.items():
        need = 4 * copies * math.prod(shape)
        if not chunks or size + need > budget_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(name)
        size += need
    return chunks


def resolve_checkpoint(root_or_dir: str | Path) -> Path | None:
    """The committed checkpoint ``root_or_dir`` names: itself if it holds meta.json, else the newest committed
    ``step_*`` directory under it, else None (no checkpoint yet). A ``step_*`` directory without meta.json (an
    interrupted save) raises ``FileNotFoundError``."""
    path = Path(root_or_dir)
    if (path / "meta.json").is_file():
        return path
    if _STEP_DIR.match(path.name) and path.is_dir():
        raise FileNotFoundError(f"{path}: not a committed checkpoint (meta.json missing)")
    return Checkpointer(path).latest()


class EngineBase(ABC):
    """Checkpointing, consolidation and bookkeeping shared by the engines.

    Subclasses wrap a model for one backend and expose its optimizer state per parameter through
    ``_full_param_state`` / ``_load_param_state``; everything in the checkpoint is then backend-neutral.
    """

    module: nn.Module

    def __init__(
        self,
        model: nn.Module,
        engine_cfg: EngineConfig,
        *,
        micro_batch_size: int,
        env: DistEnv,
        keep_checkpoints: int,
        load_chunk_bytes: int = DEFAULT_LOAD_CHUNK_BYTES,
    ) -> None:
        self.rank = env.rank
        self.world_size = env.world_size
        self.device = env.device
        self.engine_cfg = engine_cfg
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = engine_cfg.grad_accum_steps
        self.keep_checkpoints = keep_checkpoints
        # Shapes as the model defines them, recorded before a backend may re-view parameters (DeepSpeed stores 0-d
        # parameters as [1]); checkpoints and consolidated state dicts always use these. Checkpoints hold the
        # trainable parameters; frozen ones (a LoRA base) come from wherever the model was built from.
        self._param_shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
        self._frozen_shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if not p.requires_grad}
        self.load_chunk_bytes = load_chunk_bytes
        self.last_load_peak_bytes = 0
        """Bytes of full checkpoint tensors the last :meth:`load` held at once (at most one chunk)."""
        self._params_by_name: dict[str, nn.Parameter] | None = None  # filled at the first clamp_param_
        self._scheduler: LambdaLR

    # -- backend hooks

    @property
    @abstractmethod
    def global_step(self) -> int: ...

    @abstractmethod
    def _set_global_step(self, step: int) -> None: ...

    @abstractmethod
    def _at_boundary(self) -> bool:
        """No gradients of a partial accumulation are pending."""

    @abstractmethod
    def _adam_step(self) -> int:
        """AdamW's step count (0 before the first update; differs from global_step only after fp16 skips)."""

    @abstractmethod
    def _full_param_state(
        self, param: nn.Parameter, with_optim: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Collective: full fp32 (master value, exp_avg, exp_avg_sq) of one parameter on every rank."""

    @abstractmethod
    def _load_param_state(
        self, param: nn.Parameter, value: torch.Tensor, exp_avg: torch.Tensor | None, exp_avg_sq: torch.Tensor | None
    ) -> None:
        """Collective: set one parameter (master and model copy) and its moments from full tensors."""

    @abstractmethod
    def _init_optimizer_state(self, adam_step: int) -> None:
        """Make AdamW state exist (zeros) with step count ``adam_step`` before moments are loaded."""

    def _grad_scaler(self) -> torch.amp.GradScaler | None:
        return None

    def _before_state_access(self) -> None:
        """Called before ``_full_param_state(..., with_optim=True)`` runs over the parameters."""
        return None

    def gathered_params(self) -> AbstractContextManager[None]:
        return nullcontext()

    def _full_frozen_param(self, param: nn.Parameter) -> torch.Tensor:
        """Collective under ZeRO-3: the whole value of a frozen (not optimized) parameter."""
        return param.detach()

    def _trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, p in self.module.named_parameters():
            if name in self._param_shapes:
                yield name, p

    # -- common API

    def clamp_param_(self, name: str, min: float | None = None, max: float | None = None) -> bool:
        if self._params_by_name is None:
            self._params_by_name = dict(self.module.named_parameters())
        param = self._params_by_name.get(name)
        if param is None:
            raise KeyError(f"clamp_param_: the model has no parameter {name!r}")
        # The full fp32 master value, the same on every rank (gathered under ZeRO), so every rank takes the same
        # branch below; writing goes through the checkpoint-load path, which sets master and model copy (under
        # ZeRO-3 a GatheredParameters(modifier_rank=0) block re-partitions the model copy).
        value, _, _ = self._full_param_state(param, with_optim=False)
        clamped = value.clamp(min, max)
        if torch.equal(clamped, value):
            return False
        self._load_param_state(param, clamped, None, None)
        return True

    def lr(self) -> float:
        return float(self._scheduler.get_last_lr()[0])

    def _persistent_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        keys = set(self.module.state_dict().keys())
        for name, buf in self.module.named_buffers():
            if name in keys:
                yield name, buf

    def _broadcast_buffers_from_rank0(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, buf in self._persistent_buffers():
            b = buf.detach().clone()
            if self.world_size > 1:
                dist.broadcast(b, 0)
            out[name] = b.cpu()
        return out

    def consolidated_state_dict(self) -> dict[str, torch.Tensor]:
        """Collective: the full fp32 ``module.state_dict()`` on every rank (CPU tensors, the model's own shapes).

        Trainable parameters are the fp32 master values, frozen ones their values; buffers are rank 0's (BatchNorm
        running statistics are per rank under data parallelism; rank 0's is what DDP broadcasts and what a single
        exported model can hold).
        """
        state: dict[str, torch.Tensor] = {}
        for name, p in self.module.named_parameters():
            if name in self._frozen_shapes:
                state[name] = _full_cpu(self._full_frozen_param(p), self._frozen_shapes[name])
                continue
            value, _, _ = self._full_param_state(p, with_optim=False)
            state[name] = _full_cpu(value, self._param_shapes[name])  # for unpartitioned engines: the live param
        state.update(self._broadcast_buffers_from_rank0())
        return state

    def save(self, root: str | Path, client_state: Any, extra_meta: dict[str, Any] | None = None) -> Path:
        """Collective: write ``root/step_{global_step:08d}`` (see the module docstring) and return its path.

        Must be called at an accumulation boundary (right after :meth:`step` returned True, or before training).
        ``client_state`` is per rank (e.g. this rank's data-loader position): tensors and plain data (dicts, lists,
        numbers, strings), what ``torch.load(weights_only=True)`` reads back. ``extra_meta`` (JSON, rank 0's is
        written) goes into meta.json beside the engine's own keys, e.g. the run's config and its
        world-size-independent data position.
        """
        if not self._at_boundary():
            raise RuntimeError(
                "save() called in the middle of a gradient accumulation cycle; call it after step() returned True"
            )
        step = self.global_step
        adam_step = self._adam_step()
        owners = _owners(self._param_shapes, self.world_size)
        if adam_step > 0:
            self._before_state_access()
        state: dict[str, Any] = {}
        for name, p in self._trainable():
            value, exp_avg, exp_avg_sq = self._full_param_state(p, with_optim=adam_step > 0)  # collective
            if owners[name] != self.rank:
                continue
            shape = self._param_shapes[name]
            state[f"model.{name}"] = _full_cpu(value, shape)
            if adam_step > 0:
                assert exp_avg is not None and exp_avg_sq is not None
                state[f"optim.exp_avg.{name}"] = _full_cpu(exp_avg, shape)
                state[f"optim.exp_avg_sq.{name}"] = _full_cpu(exp_avg_sq, shape)
        scaler = self._grad_scaler()
        if self.rank == 0:
            for name, buf in self._persistent_buffers():
                state[f"buffers.{name}"] = buf.detach().cpu().clone()
            state["lr_scheduler"] = _pack(self._scheduler.state_dict())
            if scaler is not None:
                state["grad_scaler"] = _pack(scaler.state_dict())
        state[f"client_state.rank{self.rank}"] = _pack(client_state)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "adam_step": adam_step,
            "lr": self.lr(),
            "world_size": self.world_size,
            "backend": self.engine_cfg.backend,
            "zero_stage": self.engine_cfg.zero_stage,
            "precision": self.engine_cfg.precision,
            "micro_batch_size": self.micro_batch_size,
            "grad_accum_steps": self.grad_accum_steps,
            "global_batch_size": self.micro_batch_size * self.grad_accum_steps * self.world_size,
            "params": {name: list(shape) for name, shape in self._param_shapes.items()},
            "frozen": {name: list(shape) for name, shape in self._frozen_shapes.items()},
            "buffers": [name for name, _ in self._persistent_buffers()],
            "grad_scaler": scaler is not None,
            **(extra_meta or {}),
        }
        return Checkpointer(root, keep=self.keep_checkpoints, rank=self.rank).save(step, state, meta)

    def load(self, root_or_dir: str | Path) -> Any | None:
        """Collective: restore the newest committed checkpoint under ``root_or_dir`` (or that checkpoint).

        Restores every parameter (fp32 master and model copy), the AdamW moments and step count, rank 0's buffers,
        the LR schedule position, the fp16 loss scale and ``global_step``, whatever world size, ZeRO stage or
        backend wrote the checkpoint. Training then continues as if uninterrupted (bit-identically at the same
        world size and configuration).

        Returns:
            This rank's ``client_state`` when the checkpoint was written at the current world size. At a different
            world size: None, with a warning. Per-rank state (data-loader positions) describes streams that no
            longer exist, and handing rank 0's to every rank would make them all read the same samples; rebuild
            the data streams from ``global_step`` instead. Also None when there is no checkpoint (then
            ``global_step`` stays 0).

        Raises:
            FileNotFoundError: ``root_or_dir`` is an uncommitted (interrupted) checkpoint directory.
            ValueError: the checkpoint is not an engine checkpoint, or its parameter names/shapes differ from the
                model's (the message lists the differing names).
        """
        path = resolve_checkpoint(root_or_dir)
        if path is None:
            logger.info("no committed checkpoint under %s: starting from scratch", root_or_dir)
            return None
        meta = Checkpointer.read_meta(path)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r} is not an engine checkpoint ({CHECKPOINT_FORMAT})")
        self._check_params(meta, path)

        adam_step = int(meta["adam_step"])
        state: dict[str, Any] = {}
        buffers = dict(self._persistent_buffers())
        missing_buffers = sorted(set(buffers) - set(meta["buffers"]))
        if missing_buffers:
            raise ValueError(f"{path}: checkpoint lacks buffers {missing_buffers}")
        for name, buf in buffers.items():
            state[f"buffers.{name}"] = torch.empty_like(buf, device="cpu")
        state["lr_scheduler"] = b""
        scaler = self._grad_scaler()
        if scaler is not None and meta["grad_scaler"]:
            state["grad_scaler"] = b""
        same_world = int(meta["world_size"]) == self.world_size
        client_key = f"client_state.rank{self.rank}"
        if same_world:
            state[client_key] = b""
        Checkpointer.load(path, state)

        if adam_step > 0:
            self._init_optimizer_state(adam_step)
        self.last_load_peak_bytes = 0
        params = dict(self._trainable())
        for chunk in load_chunks(self._param_shapes, 3 if adam_step > 0 else 1, self.load_chunk_bytes):
            tensors: dict[str, torch.Tensor] = {}
            for name in chunk:
                tensors[f"model.{name}"] = torch.empty(self._param_shapes[name])
                if adam_step > 0:
                    tensors[f"optim.exp_avg.{name}"] = torch.empty(self._param_shapes[name])
                    tensors[f"optim.exp_avg_sq.{name}"] = torch.empty(self._param_shapes[name])
            self.last_load_peak_bytes = max(self.last_load_peak_bytes, _nbytes(tensors))
            Checkpointer.load(path, tensors)  # collective; every rank walks the same chunks
            for name in chunk:
                self._load_param_state(params[name], tensors.pop(f"model.{name}"),
                                       tensors.pop(f"optim.exp_avg.{name}", None),
                                       tensors.pop(f"optim.exp_avg_sq.{name}", None))  # fmt: skip
        with torch.no_grad():
            for name, buf in buffers.items():
                buf.copy_(state[f"buffers.{name}"])
        self._scheduler.load_state_dict(_unpack(state["lr_scheduler"]))
        # LambdaLR.load_state_dict restores its counters, not the optimizer's learning rates: set them as its own
        # step() would, so the next optimizer step uses the schedule value at the restored position.
        for group, lr in zip(self._scheduler.optimizer.param_groups, self._scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
        if "grad_scaler" in state:
            assert scaler is not None
            scaler.load_state_dict(_unpack(state["grad_scaler"]))
        self._set_global_step(int(meta["step"]))

        saved = (meta["backend"], meta["zero_stage"], meta["precision"], meta["world_size"])
        now = (self.engine_cfg.backend, self.engine_cfg.zero_stage, self.engine_cfg.precision, self.world_size)
        if self.rank == 0:
            logger.info(
                "loaded %s at step %d (saved as backend/zero_stage/precision/world_size=%s, now %s)",
                path, self.global_step, saved, now,
            )  # fmt: skip
            global_batch = self.micro_batch_size * self.grad_accum_steps * self.world_size
            if int(meta["global_batch_size"]) != global_batch:
                logger.warning(
                    "global batch changes from %d (checkpoint) to %d: the LR schedule and AdamW moments were tuned "
                    "for the old one", meta["global_batch_size"], global_batch,
                )  # fmt: skip
        if not same_world:
            if self.rank == 0:
                logger.warning(
                    "checkpoint was written by %d ranks, now %d: per-rank client state is not restored",
                    meta["world_size"], self.world_size,
                )  # fmt: skip
            return None
        return _unpack(state[client_key])

    def _check_params(self, meta: dict[str, Any], path: Path) -> None:
        saved = {name: tuple(shape) for name, shape in meta["params"].items()}
        missing = sorted(set(self._param_shapes) - set(saved))
        unexpected = sorted(set(saved) - set(self._param_shapes))
        mismatched = sorted(n for n in set(saved) & set(self._param_shapes) if saved[n] != self._param_shapes[n])
        if missing or unexpected or mismatched:
            details = [f"missing from checkpoint: {missing}"] if missing else []
            details += [f"not in the model: {unexpected}"] if unexpected else []
            details += [f"{n}: checkpoint {saved[n]} vs model {self._param_shapes[n]}" for n in mismatched]
            raise ValueError(f"{path}: parameters do not match the model; " + "; ".join(details))
