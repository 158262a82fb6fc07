"""CLIP / RankCLIP trainer: WebDataset shards → CLIP dual encoder → DeepSpeed ZeRO (or DDP) → checkpoints.

Every rank encodes its micro-batch, the embeddings of both towers are all-gathered with gradients
(:func:`gather_features`) and every rank computes the loss over the global batch (or, with ``loss.local_loss``,
its own rows against all columns); the engine's gradient averaging then gives the single-process gradient of the
global-batch loss. One optimizer step = ``engine.grad_accum_steps`` micro-batches.

The data position (per rank) travels in the checkpoint's client state, so a resumed run at the same world size
sees exactly the samples an uninterrupted run would have; the engine checkpoints load at any world size. At
another world size the per-rank streams do not exist any more: the run continues at the next epoch boundary
after the samples consumed (meta.json ``data``: epoch and samples of it trained on), logged as a warning.
A checkpoint is only resumed by the run that wrote it (``train.resume``, :mod:`framework.checkpoint.resume`).
At the end rank 0 writes ``run_dir/final/model.pt`` (consolidated fp32 state dict) next to ``run_dir/config.yaml``:
``scalefirst eval clip --run-dir`` reads those two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from framework.checkpoint.dcp import Checkpointer, save_atomic
from framework.checkpoint.resume import check_resume_config
from framework.config import to_dict
from framework.config.schema import ClipJobConfig, ClipLossConfig
from framework.data.clip.loader import ClipBatch, build_clip_loader
from framework.data.clip.tokenizer import Tokenizer, build_tokenizer
from framework.distributed.collectives import gather_features, local_rows
from framework.distributed.engine import Engine, resolve_checkpoint
from framework.distributed.engine_factory import build_engine
from framework.distributed.env import init_distributed
from framework.io import write_json_atomic
from framework.losses.contrastive import RankCLIPLossConfig, rankclip_loss
from framework.models.clip.model import CLIP
from framework.trainers.common import (
    Progress,
    ScalarLogger,
    environment_info,
    finished_run,
    git_commit,
    open_run_dir,
)

logger = logging.getLogger(__name__)

FINAL_MODEL = "final/model.pt"
RESUMABLE_CHANGES = (
    "train.max_steps", "train.run_dir", "train.checkpoint_every", "train.keep_checkpoints", "train.resume",
    "train.log_every", "train.progress", "train.tensorboard", "data.train_shards", "data.val_shards",
    "data.vocab_path", "engine.backend", "engine.zero_stage", "engine.device", "loss.kernel_backend",
)  # fmt: skip
"""Config keys a resumed run may change (more steps, logging, paths, the ZeRO layout, the loss kernel); any other
difference refuses the checkpoint."""


def resume_epoch(data_position: dict[str, int]) -> int:
    """The epoch a run continues at when per-rank stream positions cannot be restored (another world size):
    the one after the samples consumed, so nothing repeats (the rest of a partly trained epoch is skipped)."""
    return data_position["epoch"] + (1 if data_position["samples_in_epoch"] else 0)


def loss_config(cfg: ClipLossConfig, step: int = 0) -> RankCLIPLossConfig:
    """The loss terms at optimizer step ``step``: ``kind: clip`` is RankCLIP with both lambdas at 0; with
    ``lambda_ramp_steps`` the lambdas grow linearly from 0 (step 0) to their configured values."""
    weight = 0.0 if cfg.kind == "clip" else 1.0
    if cfg.lambda_ramp_steps:
        weight *= min(1.0, step / cfg.lambda_ramp_steps)
    return RankCLIPLossConfig(
        lambda_in=cfg.lambda_in * weight,
        lambda_cross=cfg.lambda_cross * weight,
        decay=cfg.decay,
        symmetric_in_modal=cfg.symmetric_in_modal,
        scale_by_temperature=cfg.scale_by_temperature,
        tie_break=cfg.tie_break,
        per_position=cfg.per_position,
        kernel_backend=cfg.kernel_backend,
    )


def global_batch_loss(
    img_local: torch.Tensor,
    txt_local: torch.Tensor,
    logit_scale: torch.Tensor,
    cfg: RankCLIPLossConfig,
    *,
    local_loss: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Loss terms over the global batch from this rank's normalized embeddings (both towers all-gathered)."""
    img_all, txt_all = gather_features(img_local), gather_features(txt_local)
    rows = local_rows(img_local.shape[0]) if local_loss else None
    return rankclip_loss(img_all, txt_all, logit_scale, cfg, generator=generator, rows=rows)


def train_micro_step(
    engine: Engine,
    batch: ClipBatch,
    cfg: RankCLIPLossConfig,
    *,
    local_loss: bool,
    generator: torch.Generator | None,
) -> dict[str, float]:
    images = batch.images_BCHW.to(engine.device, non_blocking=True)
    tokens = batch.tokens_BL.to(engine.device, non_blocking=True)
    eot = batch.eot_index_B.to(engine.device, non_blocking=True)
    img, txt, scale = engine(images, tokens, eot)
    terms = global_batch_loss(img.float(), txt.float(), scale.float(), cfg, local_loss=local_loss, generator=generator)
    engine.backward(terms["loss"])
    out = {k: float(v.detach()) for k, v in terms.items()}
    out["logit_scale"] = float(scale.detach())
    return out


def train_step(
    engine: Engine,
    batches: Iterator[ClipBatch],
    cfg: RankCLIPLossConfig,
    *,
    max_logit_scale: float,
    local_loss: bool = False,
    generator: torch.Generator | None = None,
) -> list[dict[str, float]]:
    """One optimizer step: ``engine.grad_accum_steps`` micro-batches from ``batches``, then the engine step, then
    ``logit_scale`` clamped in place to [0, ``max_logit_scale``] (open_clip's ``clamp_(0, math.log(100))`` after
    each step). The forward does not clamp, so the temperature's gradient never vanishes at the bound and the
    parameter cannot drift past it. Returns each micro-batch's loss terms."""
    terms = []
    stepped = False
    for _ in range(engine.grad_accum_steps):
        terms.append(train_micro_step(engine, next(batches), cfg, local_loss=local_loss, generator=generator))
        stepped = engine.step()
    if not stepped:
        raise RuntimeError(f"engine did not step after {len(terms)} micro-batches (engine.grad_accum_steps)")
    engine.clamp_param_("logit_scale", 0.0, max_logit_scale)
    return terms


def train(cfg: ClipJobConfig) -> dict[str, Any]:
    """Run one CLIP/RankCLIP job; returns the results dict (rank 0 also writes run_dir/metrics.json)."""
    env = init_distributed(cfg.engine.device)
    run_dir = open_run_dir(cfg, env.is_main)

    torch.manual_seed(cfg.train.seed)  # same init on every rank (engines also broadcast from rank 0)
    model = CLIP(cfg.model)
    n_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them
    engine = build_engine(
        model,
        cfg.engine,
        cfg.optim,
        micro_batch_size=cfg.train.batch_size,
        max_steps=cfg.train.max_steps,
        env=env,
        keep_checkpoints=cfg.train.keep_checkpoints,
    )
    ckpt_root = run_dir / "checkpoints"
    client: dict[str, Any] | None = None
    latest = None if cfg.train.resume == "never" else resolve_checkpoint(ckpt_root)
    saved: dict[str, Any] = {}
    if latest is not None:
        saved = Checkpointer.read_meta(latest)
        check_resume_config(
            saved.get("config"), to_dict(cfg), may_change=RESUMABLE_CHANGES, mode=cfg.train.resume, checkpoint=latest
        )
        client = engine.load(latest)
        if env.is_main:
            logger.info("resumed at optimizer step %d from %s", engine.global_step, latest)

    loader = build_clip_loader(
        cfg.data,
        shards=cfg.data.train_shards,
        image_size=cfg.model.image_size,
        context_length=cfg.model.context_length,
        batch_size=cfg.train.batch_size,
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.train.seed,
        train=True,
        state=(client or {}).get("loader"),
    )
    accum = cfg.engine.grad_accum_steps
    if client is None and engine.global_step:
        epoch = resume_epoch(saved["data"])
        loader.start_at_epoch(epoch)
        if env.is_main:
            logger.warning(
                "data: world size changed since the checkpoint (%d -> %d ranks): %d samples of epoch %d were "
                "trained on; starting at epoch %d", saved["world_size"], env.world_size,
                saved["data"]["samples_in_epoch"], saved["data"]["epoch"], epoch,
            )  # fmt: skip
    global_batch = cfg.train.batch_size * env.world_size * accum
    if env.is_main:
        logger.info(
            "%s: %.1fM params, global batch %d (%d ranks x %d x %d accum), %d batches/epoch per rank, backend %s%s",
            cfg.loss.kind, n_params / 1e6, global_batch, env.world_size, cfg.train.batch_size, accum,
            loader.batches_per_epoch, cfg.engine.backend,
            f" ZeRO-{cfg.engine.zero_stage}" if cfg.engine.backend == "deepspeed" else "",
        )  # fmt: skip

    def save() -> None:
        state = {"loader": loader.state_dict(), "data_stats": loader.stats()}
        # Every rank has yielded the same number of batches: the global position in samples is rank-independent.
        in_epoch = loader.batches_yielded - loader.epoch * loader.batches_per_epoch
        position = {"epoch": loader.epoch, "samples_in_epoch": in_epoch * cfg.train.batch_size * env.world_size}
        engine.save(ckpt_root, client_state=state, extra_meta={"config": to_dict(cfg), "data": position})

    scalars = ScalarLogger(run_dir / "tb", enabled=cfg.train.tensorboard and env.is_main)
    progress = Progress(
        cfg.train.max_steps, engine.global_step, global_batch, cfg.train.progress and env.is_main, cfg.loss.kind
    )
    history: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    last_saved = engine.global_step if client is not None else -1
    t_start, start_step = time.perf_counter(), engine.global_step
    engine.train()
    batches = iter(loader)
    try:
        while engine.global_step < cfg.train.max_steps:
            # The random tie-break must draw the same permutation on every rank (each computes the global loss).
            gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + engine.global_step)
            loss_cfg = loss_config(cfg.loss, engine.global_step)
            window += train_step(
                engine, batches, loss_cfg, max_logit_scale=cfg.model.max_logit_scale,
                local_loss=cfg.loss.local_loss, generator=gen,
            )  # fmt: skip
            step = engine.global_step
            progress.update(loss=window[-1]["loss"])
            if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
                mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                mean |= {"lr": engine.lr(), "samples_per_s": progress.examples_per_second}
                history.append({"step": step, **mean})
                scalars.log({f"train/{k}": v for k, v in mean.items()}, step)
                window.clear()
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                save()
                last_saved = step
    finally:
        progress.close()
        loader.close()
    train_seconds = time.perf_counter() - t_start
    steps_run = engine.global_step - start_step
    if last_saved != engine.global_step:
        save()

    final_state = engine.consolidated_state_dict()
    if env.is_main:
        save_atomic(final_state, run_dir / FINAL_MODEL)
    results = {
        "loss_kind": cfg.loss.kind,
        "steps": engine.global_step,
        "world_size": env.world_size,
        "global_batch": global_batch,
        "samples_per_s": steps_run * global_batch / train_seconds if train_seconds > 0 and steps_run else 0.0,
        "final": history[-1] if history else {},
        "history": history,
        "data": loader.stats(),
        "engine": {
            "backend": cfg.engine.backend,
            "zero_stage": cfg.engine.zero_stage,
            "precision": cfg.engine.precision,
        },
        "git_commit": git_commit(),
        "env": environment_info(),
        "config": to_dict(cfg),
    }
    scalars.close()
    if env.is_main:
        write_json_atomic(run_dir / "metrics.json", results)
        logger.info("done: %d steps, final %s", engine.global_step, results["final"])
    return results


def load_trained_clip(run_dir: str | Path) -> tuple[CLIP, Tokenizer, ClipJobConfig]:
    """The final fp32 model of a finished run, its tokenizer and its config (for evaluation, single process)."""
    cfg, state = finished_run(run_dir, "clip", FINAL_MODEL)
    model = CLIP(cfg.model)
    model.load_state_dict(state)
    model.eval()
    tokenizer = build_tokenizer(cfg.data.tokenizer, cfg.model.context_length, cfg.data.vocab_path)
    return model, tokenizer, cfg
