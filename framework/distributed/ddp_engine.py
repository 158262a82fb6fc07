"""Plain torch ``DistributedDataParallel`` + AdamW behind the :class:`~framework.distributed.engine.Engine` interface.

The comparison baseline for the DeepSpeed engine: every rank holds the whole model, its gradients and both AdamW
moments. Gradient accumulation skips the all-reduce on non-boundary micro-batches (``no_sync``); bf16/fp16 run the
forward under ``torch.autocast`` with fp32 parameters (fp16 adds a ``GradScaler``). Build it with
:func:`framework.distributed.engine_factory.build_engine` (``engine.backend=ddp``).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

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
from framework.distributed.env import DistEnv

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DDPEngine(EngineBase):
    """DDP engine; see :class:`~framework.distributed.engine.Engine` for the methods' contracts."""

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
        group_lrs: dict[str, float] | None = None,
        load_chunk_bytes: int = DEFAULT_LOAD_CHUNK_BYTES,
    ) -> None:
        if engine_cfg.zero_stage:
            raise ValueError(f"engine.zero_stage={engine_cfg.zero_stage} needs engine.backend=deepspeed")
        super().__init__(
            model, engine_cfg, micro_batch_size=micro_batch_size, env=env, keep_checkpoints=keep_checkpoints,
            load_chunk_bytes=load_chunk_bytes,
        )  # fmt: skip
        self.module = model.to(env.device)
        # Parameters are broadcast from rank 0 here; buffers (BatchNorm statistics) before every forward.
        self._ddp = DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda" else None)
        self._optimizer = build_optimizer(model, optim_cfg, group_lrs)
        self._scheduler = build_lr_scheduler(self._optimizer, optim_cfg, max_steps)
        self._autocast_dtype = _AUTOCAST_DTYPES.get(engine_cfg.precision)
        self._scaler = torch.amp.GradScaler(env.device.type) if engine_cfg.precision == "fp16" else None
        self._micro_steps = 0
        self._global_step = 0

    @property
    def global_step(self) -> int:
        return self._global_step

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        boundary = (self._micro_steps + 1) % self.grad_accum_steps == 0
        # DDP decides in the forward whether the following backward all-reduces: accumulate locally until the
        # micro-batch that closes the cycle.
        sync = nullcontext() if boundary else self._ddp.no_sync()
        amp = torch.autocast(self.device.type, dtype=self._autocast_dtype) if self._autocast_dtype else nullcontext()
        with sync, amp:
            out = self._ddp(*args, **kwargs)
        return to_fp32(out) if self._autocast_dtype else out

    def backward(self, loss: torch.Tensor) -> None:
        if self.grad_accum_steps > 1:
            loss = loss / self.grad_accum_steps
        if self._scaler is not None:
            loss = self._scaler.scale(loss)
        loss.backward()

    def step(self) -> bool:
        self._micro_steps += 1
        if self._micro_steps % self.grad_accum_steps:
            return False
        if self._scaler is not None:
            self._scaler.unscale_(self._optimizer)
        if self.engine_cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.engine_cfg.grad_clip)
        stepped = True
        if self._scaler is not None:
            scale = self._scaler.get_scale()
            self._scaler.step(self._optimizer)
            self._scaler.update()
            stepped = self._scaler.get_scale() >= scale  # a lowered scale means inf/nan gradients: step skipped
        else:
            self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        if stepped:  # as DeepSpeed: the schedule advances with the updates actually applied
            self._scheduler.step()
        self._global_step += 1
        return True

    def train(self) -> None:
        self._ddp.train()

    def eval(self) -> None:
        self._ddp.eval()

    # -- checkpoint hooks (parameters and moments are replicated: no collectives needed)

    def _set_global_step(self, step: int) -> None:
        self._global_step = step
        self._micro_steps = step * self.grad_accum_steps

    def _at_boundary(self) -> bool:
        return self._micro_steps % self.grad_accum_steps == 0

    def _adam_step(self) -> int:
        return adam_step_count(self._optimizer)

    def _grad_scaler(self) -> torch.amp.GradScaler | None:
        return self._scaler

    def _full_param_state(
        self, param: nn.Parameter, with_optim: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        return replicated_param_state(param, self._optimizer, with_optim)

    def _load_param_state(
        self, param: nn.Parameter, value: torch.Tensor, exp_avg: torch.Tensor | None, exp_avg_sq: torch.Tensor | None
    ) -> None:
        load_replicated_param_state(param, self._optimizer, value, exp_avg, exp_avg_sq)

    def _init_optimizer_state(self, adam_step: int) -> None:
        init_adam_state(self._optimizer, adam_step)
