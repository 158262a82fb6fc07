"""Shared pieces of the engine tests: a tiny CLIP, seeded synthetic global batches, the RankCLIP loss on gathered
features, rank-side training loops and the single-process reference they are compared with.

Data layout: the global batch of a step has ``GLOBAL_BATCH`` samples; rank ``r`` of ``W`` trains on rows
``[r*B/W, (r+1)*B/W)`` and, with ``micro`` micro-batches per optimizer step, on the ``k``-th ``1/micro`` of those in
micro-batch ``k``. Features are gathered in rank order, so micro-batch ``k``'s global batch is the concatenation over
ranks of their ``k``-th parts (:func:`micro_rows`), which is what the reference computes on.

BatchNorm: each rank normalizes its image tower's activations with its own part's statistics (SyncBatchNorm does not
run on CPU). The reference therefore encodes the images of each (rank, micro-batch) part separately and concatenates
the embeddings; the text tower (LayerNorm, per token) sees the whole micro-batch at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from framework.config.schema import ClipOptimConfig, EngineConfig
from framework.distributed.collectives import gather_features
from framework.distributed.engine import Engine, build_lr_scheduler, build_optimizer
from framework.distributed.engine_factory import build_engine
from framework.distributed.env import read_env
from framework.losses.contrastive import RankCLIPLossConfig, rankclip_loss
from framework.models.clip.model import CLIP, tiny_clip_config

GLOBAL_BATCH = 8
MAX_STEPS = 5
"""Length of the runs and end of the cosine schedule."""
OPTIM = ClipOptimConfig(lr=1e-3, weight_decay=0.1, betas=[0.9, 0.98], eps=1e-6, warmup_steps=2, schedule="cosine")
# ZeRO-3 keeps parameters below this many elements whole on every rank; 0 partitions all of them, which is the
# code path worth testing on a tiny model.
DS_OVERRIDES = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
LOSS = RankCLIPLossConfig()


def make_model(seed: int = 0) -> CLIP:
    """The tiny CLIP (32 px) with parameters drawn from ``seed`` and BatchNorm statistics calibrated on a fixed batch.

    Calibrated statistics (instead of the initial mean 0 / variance 1) make eval-mode BatchNorm normalize as in
    training: frozen with the initial ones, the image tower's activations shrink layer by layer until every image
    gets nearly the same embedding, and losses then depend on the intra-op thread count at the 1e-3 level.
    """
    torch.manual_seed(seed)
    model = CLIP(tiny_clip_config())
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = None  # cumulative average: after one batch, the running statistics are that batch's
    calibration = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        model.train().encode_image(calibration)
    for m in bns:
        m.momentum = 0.1
    return model


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images [B, 3, 32, 32], tokens [B, 16], end-of-text positions [B] of one step (seeded by the step)."""
    g = torch.Generator().manual_seed(1000 + step)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 100, (GLOBAL_BATCH, 16), generator=g)
    eot = torch.randint(4, 16, (GLOBAL_BATCH,), generator=g)
    return images, tokens, eot


def part_rows(rank: int, world_size: int, micro: int, k: int) -> slice:
    """Rows of the global batch that rank ``rank`` uses in micro-batch ``k``."""
    per_rank = GLOBAL_BATCH // world_size
    per_micro = per_rank // micro
    start = rank * per_rank + k * per_micro
    return slice(start, start + per_micro)


def micro_rows(world_size: int, micro: int, k: int) -> list[slice]:
    """Micro-batch ``k``'s global batch: every rank's part, in rank order."""
    return [part_rows(r, world_size, micro, k) for r in range(world_size)]


def clip_rank_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return rankclip_loss(img, txt, scale, LOSS)["loss"]


# ------------------------------------------------------------------------------------------- single process


def reference_run(
    steps: int,
    world_sizes: list[int],
    *,
    optim: ClipOptimConfig = OPTIM,
    grad_clip: float | None = 1.0,
    micro: int = 1,
    grad_scale: float = 1.0,
    frozen_bn: bool = False,
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Plain torch AdamW + the shared schedule in one process, on the same global batches as the ranks.

    ``world_sizes[step]`` is the number of ranks the engine run has at that step (it decides the BatchNorm parts).
    ``grad_scale`` multiplies every gradient (2 emulates an engine that sums where it should average).
    ``frozen_bn`` runs BatchNorm layers in eval mode (see :func:`set_train`). Returns the loss of each step's last
    micro-batch and the final parameters.
    """
    model = make_model()
    set_train(model, frozen_bn)
    optimizer = build_optimizer(model, optim)
    scheduler = build_lr_scheduler(optimizer, optim, MAX_STEPS)
    losses = []
    for step in range(steps):
        images, tokens, eot = global_batch(step)
        for k in range(micro):
            parts = micro_rows(world_sizes[step], micro, k)
            img = torch.cat([model.encode_image(images[rows]) for rows in parts])  # per-rank BatchNorm statistics
            rows = torch.cat([torch.arange(GLOBAL_BATCH)[p] for p in parts])
            txt = model.encode_text(tokens[rows], eot[rows])
            loss = clip_rank_loss(img, txt, model.scale())
            (loss * grad_scale / micro).backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.item())
    return losses, {name: p.detach().clone() for name, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------- rank side


def make_engine(
    backend: str,
    stage: int,
    *,
    precision: str = "fp32",
    micro: int = 1,
    optim: ClipOptimConfig = OPTIM,
    grad_clip: float | None = 1.0,
    seed: int = 0,
) -> Engine:
    """An engine for this rank (call inside a spawned rank); ``seed`` != 0 builds a differently initialized model
    (to prove that a later ``load`` really overwrites every parameter)."""
    env = read_env("cpu")
    cfg = EngineConfig(backend=backend, zero_stage=stage, precision=precision, grad_accum_steps=micro,
                       grad_clip=grad_clip, device="cpu")  # type: ignore[arg-type]  # fmt: skip
    return build_engine(
        make_model(seed), cfg, optim,
        micro_batch_size=GLOBAL_BATCH // env.world_size // micro, max_steps=MAX_STEPS, env=env,
        ds_config_overrides=DS_OVERRIDES if backend == "deepspeed" else None,
    )  # fmt: skip


def set_train(model: torch.nn.Module, frozen_bn: bool) -> None:
    """Training mode; with ``frozen_bn`` BatchNorm layers normalize with their (initial) running statistics instead
    of the batch's, which makes every sample's embedding independent of the others in its micro-batch."""
    model.train()
    if frozen_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def train(engine: Engine, start: int, stop: int, *, micro: int = 1, frozen_bn: bool = False) -> list[float]:
    """Optimizer steps ``start..stop-1`` on this rank's rows; returns each step's last micro-batch loss."""
    engine.train()
    set_train(engine.module, frozen_bn)
    losses = []
    for step in range(start, stop):
        images, tokens, eot = global_batch(step)
        for k in range(micro):
            rows = part_rows(engine.rank, engine.world_size, micro, k)
            img, txt, scale = engine(images[rows], tokens[rows], eot[rows])
            loss = clip_rank_loss(gather_features(img), gather_features(txt), scale)
            engine.backward(loss)
            stepped = engine.step()
            assert stepped == (k == micro - 1), (step, k, stepped)
        assert engine.global_step == step + 1
        losses.append(loss.item())
    return losses


def params_of(engine: Engine) -> dict[str, torch.Tensor]:
    names = {name for name, _ in make_model().named_parameters()}
    return {k: v for k, v in engine.consolidated_state_dict().items() if k in names}


def engine_name(backend: str, stage: int) -> str:
    return "ddp" if backend == "ddp" else f"zero{stage}"


@dataclasses.dataclass(frozen=True)
class Run:
    backend: str
    stage: int

    @property
    def name(self) -> str:
        return engine_name(self.backend, self.stage)


def checkpoint_dir(root: str | Path, run: Run, step: int) -> Path:
    return Path(root) / run.name / f"step_{step:08d}"


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def summary(engine: Engine) -> dict[str, Any]:
    return {"global_step": engine.global_step, "lr": engine.lr()}
