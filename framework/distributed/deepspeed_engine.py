"""DeepSpeed ZeRO 0-3 behind the :class:`~framework.distributed.engine.Engine` interface.

The only module of the project that imports ``deepspeed`` (lazily, when an engine is built, so that importing the
framework never probes accelerators). Build it with :func:`framework.distributed.engine_factory.build_engine`
(``engine.backend=deepspeed``).

What DeepSpeed gets (:func:`deepspeed_config`): the micro-batch size, gradient accumulation, ZeRO stage, gradient
clipping and, for bf16/fp16, ``torch_autocast``; plus a client torch AdamW over
:func:`~framework.distributed.engine.param_groups` and the shared ``LambdaLR`` schedule, which DeepSpeed steps after
every applied optimizer step. ZeRO-1 partitions the AdamW moments and fp32 master weights over the ranks, ZeRO-2
also the gradients, ZeRO-3 also the parameters; stage 0 is DeepSpeed's data parallelism without partitioning.

Choices forced by DeepSpeed 0.19.8 (each checked by tests/distributed/test_zero_engines.py):

* Mixed precision uses DeepSpeed's ``torch_autocast`` (fp32 parameters and master weights, forward under
  ``torch.autocast``, bf16/fp16 gradient all-reduce for Linear/Conv weights), not its ``bf16``/``fp16`` sections,
  which convert the model's parameters to 16 bits: the CLIP text tower builds its causal mask in fp32, and a 16-bit
  attention rejects it. Autocast also gives both backends the same numerics.
* 0-d parameters (CLIP's ``logit_scale``) are stored as shape ``[1]`` while the engine owns the module: DeepSpeed
  broadcasts parameters as ``p.data.view(torch.uint8)``, which fails on 0-d tensors. The forward therefore returns a
  ``[1]``-shaped logit scale (which broadcasts like the scalar); checkpoints and :meth:`consolidated_state_dict` use
  the model's own shapes.
* DeepSpeed creates AdamW state lazily at the first step; :meth:`load` creates it explicitly (zeros, then the saved
  moments). ZeRO-1/2 give each parameter views into its partition's moments, and link them right after the *first*
  parameter group's first update, when the other groups' moments do not exist yet: with our two groups (decay /
  no decay) ``safe_get_full_optimizer_state`` then fails for the second. Both ``save`` and ``load`` therefore re-link
  the views first (``_lazy_init_hp_params_optimizer_state``, the one private DeepSpeed method used here).
* ZeRO-3's ``safe_set_full_fp32_param``/``safe_set_full_optimizer_state`` slice a rank's partition out of the full
  tensor without the zero padding of the last partition (an out-of-range error whenever a parameter's size is not a
  multiple of the world size); :meth:`load` cuts padded partitions itself and uses the ``safe_set_local_*`` calls.
* In-place edits of a parameter (:meth:`~framework.distributed.engine.Engine.clamp_param_`, the CLIP temperature
  clamp) go through :meth:`_load_param_state`, as a checkpoint load does: ZeRO-1/2/3 keep the fp32 master apart from
  the model's copy and step the master, so editing only the model copy (e.g. inside ``GatheredParameters`` with a
  ``modifier_rank``) is undone by the next step (tests/distributed/test_logit_scale_clamp.py).
* DeepSpeed requires ``LOCAL_RANK`` in the environment even when the process group exists; a plain ``python`` run (a
  world of one, no torchrun) gets it from :func:`~framework.distributed.env.export_local_rank`.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from framework.config.schema import ClipOptimConfig, EngineConfig
from framework.distributed.engine import (
    DEFAULT_LOAD_CHUNK_BYTES,
    EngineBase,
    adam_step_count,
    build_lr_scheduler,
    build_optimizer,
    init_adam_state,
    load_replicated_param_state,
    replicated_param_state,
    to_fp32,
)
from framework.distributed.env import DistEnv, export_local_rank
from framework.logs import adopt_library_loggers, prints_to_log

logger = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def deepspeed_config(
    engine_cfg: EngineConfig,
    *,
    micro_batch_size: int,
    world_size: int,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config dict for ``engine_cfg``; ``overrides`` are merged over it recursively.

    Example::

        >>> cfg = deepspeed_config(EngineConfig(zero_stage=3, grad_accum_steps=2), micro_batch_size=8, world_size=2)
        >>> cfg["train_batch_size"], cfg["zero_optimization"], cfg["gradient_clipping"]
        (32, {'stage': 3}, 1.0)
    """
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": engine_cfg.grad_accum_steps,
        "train_batch_size": micro_batch_size * engine_cfg.grad_accum_steps * world_size,
        "zero_optimization": {"stage": engine_cfg.zero_stage},
        "gradient_clipping": engine_cfg.grad_clip or 0.0,
        "steps_per_print": sys.maxsize,  # the trainer logs; DeepSpeed's own periodic print is noise
        "wall_clock_breakdown": False,
    }
    if engine_cfg.precision in _AUTOCAST_DTYPES:
        cfg["torch_autocast"] = {"enabled": True, "dtype": _AUTOCAST_DTYPES[engine_cfg.precision]}
    return _merge(cfg, overrides or {})


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _import_deepspeed(device: torch.device) -> Any:
    """Import DeepSpeed with the accelerator matching ``device`` (DS_ACCELERATOR=cpu on CPU, auto-detect on CUDA)."""
    if "deepspeed" not in sys.modules and device.type == "cpu" and not os.environ.get("DS_ACCELERATOR"):
        # Read once, at DeepSpeed's first accelerator query; on a machine with a GPU it would otherwise pick CUDA.
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    adopt_library_loggers()  # DeepSpeed's logger prints to stdout itself: route it to log.txt like the others

    name = get_accelerator().device_name()
    if name != device.type:
        raise RuntimeError(
            f"DeepSpeed's accelerator is {name!r} but this run is on {device}: set DS_ACCELERATOR={device.type} "
            "before DeepSpeed is first imported"
        )
    return deepspeed


def _view_scalar_params_as_1d(model: nn.Module) -> None:
    for p in model.parameters():
        if p.dim() == 0:
            p.data = p.data.reshape(1)


class DeepSpeedEngine(EngineBase):
    """DeepSpeed engine; see :class:`~framework.distributed.engine.Engine` for the methods' contracts.

    Attributes:
        ds_config: The config DeepSpeed was initialized with.
        zero_stage: 0-3.
    """

    def __init__(
        self,
        model: nn.Module,
        engine_cfg: EngineConfig,
        optim_cfg: ClipOptimConfig,
        *,
        micro_batch_size: int,
        max_steps: int,
        env: DistEnv,
        keep_checkpoints: int = 2,
        ds_config_overrides: dict[str, Any] | None = None,
        group_lrs: dict[str, float] | None = None,
        load_chunk_bytes: int = DEFAULT_LOAD_CHUNK_BYTES,
    ) -> None:
        super().__init__(
            model, engine_cfg, micro_batch_size=micro_batch_size, env=env, keep_checkpoints=keep_checkpoints,
            load_chunk_bytes=load_chunk_bytes,
        )  # fmt: skip
        deepspeed = _import_deepspeed(env.device)
        self._zero = deepspeed.zero
        self.zero_stage = engine_cfg.zero_stage
        self.ds_config = deepspeed_config(
            engine_cfg, micro_batch_size=micro_batch_size, world_size=env.world_size, overrides=ds_config_overrides
        )
        _view_scalar_params_as_1d(model)
        model.to(env.device)
        optimizer = build_optimizer(model, optim_cfg, group_lrs)
        self._scheduler = build_lr_scheduler(optimizer, optim_cfg, max_steps)
        # The process group exists already (init_distributed); DeepSpeed adopts it and broadcasts the parameters
        # from rank 0.
        export_local_rank(env)
        with prints_to_log("deepspeed.stdout"):  # it print()s "... built successfully" on every rank
            self._ds, _, _, _ = deepspeed.initialize(
                model=model,
                optimizer=optimizer,
                lr_scheduler=self._scheduler,
                config=self.ds_config,
                dist_init_required=False,
            )
        self.module = self._ds.module
        self._fp32_outputs = engine_cfg.precision != "fp32"
        from deepspeed.utils import (
            safe_get_full_fp32_param,
            safe_get_full_optimizer_state,
            safe_set_full_fp32_param,
            safe_set_full_optimizer_state,
            safe_set_local_fp32_param,
            safe_set_local_optimizer_state,
        )

        self._get_param, self._get_state = safe_get_full_fp32_param, safe_get_full_optimizer_state
        self._set_param, self._set_state = safe_set_full_fp32_param, safe_set_full_optimizer_state
        self._set_local_param, self._set_local_state = safe_set_local_fp32_param, safe_set_local_optimizer_state

    @property
    def global_step(self) -> int:
        return int(self._ds.global_steps)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self._ds(*args, **kwargs)
        return to_fp32(out) if self._fp32_outputs else out

    def backward(self, loss: torch.Tensor) -> None:
        self._ds.backward(loss)

    def step(self) -> bool:
        boundary = bool(self._ds.is_gradient_accumulation_boundary())
        self._ds.step()
        return boundary

    def train(self) -> None:
        self._ds.train()

    def eval(self) -> None:
        self._ds.eval()

    def gathered_params(self) -> AbstractContextManager[None]:
        if self.zero_stage == 3:
            return self._zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)
        return nullcontext()

    def _full_frozen_param(self, param: nn.Parameter) -> torch.Tensor:
        if self.zero_stage == 3:
            with self._zero.GatheredParameters([param], modifier_rank=None):
                return param.detach().clone()
        return param.detach()

    # -- checkpoint hooks

    def _inner_optimizer(self) -> torch.optim.Optimizer:
        """The torch AdamW holding the state: the client optimizer itself at stage 0, wrapped by ZeRO above."""
        return self._ds.optimizer if self.zero_stage == 0 else self._ds.optimizer.optimizer

    def _set_global_step(self, step: int) -> None:
        self._ds.global_steps = step
        self._ds.global_samples = step * self._ds.train_batch_size()
        self._ds.micro_steps = step * self.grad_accum_steps

    def _at_boundary(self) -> bool:
        return self._ds.micro_steps % self.grad_accum_steps == 0

    def _adam_step(self) -> int:
        return adam_step_count(self._inner_optimizer())

    def _grad_scaler(self) -> torch.amp.GradScaler | None:
        scaler = getattr(self._ds, "torch_autocast_z0_gradscaler", None)
        return scaler if scaler is not None else getattr(self._ds.optimizer, "torch_autocast_gradscaler", None)

    def _full_param_state(
        self, param: nn.Parameter, with_optim: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.zero_stage == 0:  # unpartitioned: the model's parameter is the fp32 master
            return replicated_param_state(param, self._inner_optimizer(), with_optim)
        # Collectives (all-reduce of fragments at ZeRO-1/2, all-gather of partitions at ZeRO-3).
        value = self._get_param(param)
        if not with_optim:
            return value, None, None
        return value, self._get_state(param, "exp_avg"), self._get_state(param, "exp_avg_sq")

    def _load_param_state(
        self, param: nn.Parameter, value: torch.Tensor, exp_avg: torch.Tensor | None, exp_avg_sq: torch.Tensor | None
    ) -> None:
        value = value.to(self.device)
        if self.zero_stage == 0:
            return load_replicated_param_state(param, self._inner_optimizer(), value, exp_avg, exp_avg_sq)
        with torch.no_grad():
            if self.zero_stage == 3:
                # DeepSpeed's safe_set_full_* cut a rank's slice without the zero padding of the last partition
                # (an error whenever numel % world_size != 0): cut padded local partitions here instead.
                self._set_local_param(param, self._local_partition(param, value))
                if exp_avg is not None and exp_avg_sq is not None:
                    self._set_local_state(param, self._local_partition(param, exp_avg), "exp_avg")
                    self._set_local_state(param, self._local_partition(param, exp_avg_sq), "exp_avg_sq")
                # The model copy is partitioned too: gather, overwrite (rank 0's values win), re-partition.
                with self._zero.GatheredParameters([param], modifier_rank=0):
                    param.data.copy_(value.reshape(param.data.shape))
                return
            # ZeRO-1/2: each rank copies its fragment of the full tensors into its fp32 partition and moments, and
            # the whole model copy, which every rank holds.
            self._set_param(param, value)
            if exp_avg is not None and exp_avg_sq is not None:
                self._set_state(param, exp_avg.to(self.device), "exp_avg")
                self._set_state(param, exp_avg_sq.to(self.device), "exp_avg_sq")
            param.data.copy_(value.reshape(param.data.shape))

    def _local_partition(self, param: nn.Parameter, full: torch.Tensor) -> torch.Tensor:
        """This rank's ZeRO-3 partition of a full tensor of ``param``'s size, zero-padded like DeepSpeed's."""
        size = param.ds_tensor.numel()
        start = size * dist.get_rank(group=param.ds_process_group)
        flat = full.to(self.device, torch.float32).flatten()
        local = torch.zeros(size, dtype=torch.float32, device=self.device)
        stop = min(start + size, flat.numel())
        if stop > start:
            local[: stop - start] = flat[start:stop]
        return local

    def _init_optimizer_state(self, adam_step: int) -> None:
        # The tensors AdamW steps: the model's parameters at stage 0, flat fp32 partitions above. ZeRO-3 swaps each
        # sub-group's partition into the inner optimizer's (otherwise empty) groups only for its step.
        flat = self._ds.optimizer.fp32_partitioned_groups_flat if self.zero_stage == 3 else None
        init_adam_state(self._inner_optimizer(), adam_step, flat)
        self._before_state_access()

    def _before_state_access(self) -> None:
        if self.zero_stage in (1, 2):
            # Point every parameter's moment views at its group's current state (see the module docstring); the
            # same call DeepSpeed makes after its first update.
            zero_optimizer = self._ds.optimizer
            zero_optimizer._hp_optimizer_states_linked = False
            zero_optimizer._lazy_init_hp_params_optimizer_state()
