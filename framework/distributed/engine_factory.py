"""The engine factory: :func:`build_engine` picks the backend named by ``EngineConfig.backend``.

Apart from :mod:`framework.distributed.engine` (the interface and the shared implementation) so that the backends
import the base module and the base module imports no backend.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from framework.config.schema import ClipOptimConfig, EngineConfig
from framework.distributed.engine import DEFAULT_LOAD_CHUNK_BYTES, Engine
from framework.distributed.env import DistEnv


def check_precision(engine_cfg: EngineConfig, device: torch.device) -> None:
    """Raise ``ValueError`` (naming ``engine.precision``) for a precision this device cannot train in.

    bf16 runs on CPU (autocast) and on CUDA devices with bf16 support. fp16 needs CUDA: CPUs have no fast fp16
    arithmetic (DeepSpeed's CPU accelerator reports fp16 unsupported), so an fp16 run on CPU would be slower than
    fp32 and test nothing that matters.
    """
    precision = engine_cfg.precision
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"engine.precision must be fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"engine.precision=fp16 needs a CUDA device, but this run is on {device.type} "
            f"(backend={engine_cfg.backend}, zero_stage={engine_cfg.zero_stage}); use bf16 or fp32 on CPU"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"engine.precision=bf16 is not supported by {torch.cuda.get_device_name(device)}")


def build_engine(
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
) -> Engine:
    """Wrap ``model`` (same initial weights on every rank) for data-parallel training on ``env``'s process group.

    Args:
        model: A plain ``nn.Module``; the engine moves it to ``env.device`` and owns it from now on.
        engine_cfg: Backend, ZeRO stage, precision, gradient accumulation and clipping.
        optim_cfg: AdamW hyper-parameters and the LR schedule.
        micro_batch_size: Samples per rank per forward (DeepSpeed's ``train_micro_batch_size_per_gpu``).
        max_steps: Optimizer steps of the whole run (end of the cosine schedule).
        env: The initialized distributed environment (:func:`framework.distributed.env.init_distributed`).
        keep_checkpoints: Committed checkpoints kept by :meth:`Engine.save` (oldest removed first).
        group_lrs: Parameter-name substring → its own peak LR (e.g. a LoRA run's projector); see
            :func:`~framework.distributed.engine.param_groups`.
        load_chunk_bytes: Most bytes of full checkpoint tensors held at once by :meth:`Engine.load`.
        ds_config_overrides: Extra DeepSpeed config merged (recursively) over the generated one, e.g.
            ``{"zero_optimization": {"stage3_param_persistence_threshold": 0}}``. Only with backend=deepspeed.

    Raises:
        ValueError: an unsupported precision for the device (names ``engine.precision``), a device other than the
            process group's (``engine.device``), non-positive sizes, or
            ``ds_config_overrides`` with backend=ddp; a model without trainable parameters.
    """
    if micro_batch_size <= 0 or max_steps <= 0 or keep_checkpoints <= 0:
        raise ValueError(
            f"micro_batch_size, max_steps and keep_checkpoints must be > 0, got {micro_batch_size}, {max_steps}, "
            f"{keep_checkpoints}"
        )
    if engine_cfg.device != "auto" and engine_cfg.device != env.device.type:
        raise ValueError(f"engine.device={engine_cfg.device} but the process group runs on {env.device}")
    check_precision(engine_cfg, env.device)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters (every parameter has requires_grad=False)")
    if load_chunk_bytes <= 0:
        raise ValueError(f"load_chunk_bytes must be > 0, got {load_chunk_bytes}")
    kwargs = dict(micro_batch_size=micro_batch_size, max_steps=max_steps, env=env, keep_checkpoints=keep_checkpoints,
                  group_lrs=group_lrs, load_chunk_bytes=load_chunk_bytes)  # fmt: skip
    if engine_cfg.backend == "deepspeed":
        from framework.distributed.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, engine_cfg, optim_cfg, ds_config_overrides=ds_config_overrides, **kwargs)
    if engine_cfg.backend == "ddp":
        if ds_config_overrides:
            raise ValueError("ds_config_overrides given but engine.backend=ddp")
        from framework.distributed.ddp_engine import DDPEngine

        return DDPEngine(model, engine_cfg, optim_cfg, **kwargs)
    raise ValueError(f"engine.backend must be 'deepspeed' or 'ddp', got {engine_cfg.backend!r}")
