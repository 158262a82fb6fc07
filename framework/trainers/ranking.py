"""Ranking trainer: data → model → TorchRec sharding → train loop with checkpoints → gathered AUC/NCE.

One optimizer step is one step on the global batch (``train.global_batch_size`` examples, each of W ranks
taking its 1/W slice): see ``framework.distributed.torchrec_sharding``. Global batches are a pure function of
(seed, epoch, step) whatever the world size (UC-Sampling is keyed by the example, not the rank), so the
examples of a run do not depend on W. Training state (step, epoch, global examples consumed in the epoch) is
part of every checkpoint: a run saved at one world size and resumed at another continues on exactly the
examples an uninterrupted run would see next (tested 2 -> 1 and 1 -> 2 ranks through this trainer).
A checkpoint is only resumed by the run that wrote it (``train.resume``, :mod:`framework.checkpoint.resume`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from framework.checkpoint.dcp import Checkpointer
from framework.checkpoint.resume import check_resume_config
from framework.config import to_dict
from framework.config.schema import DataConfig, RankingJobConfig
from framework.data.ranking.batches import RankingBatch, RankingData
from framework.data.ranking.interactions import Interactions
from framework.data.ranking.movielens import load_movielens
from framework.data.ranking.synthetic import generate_synthetic
from framework.distributed.env import DistEnv, init_distributed
from framework.distributed.torchrec_sharding import ShardedModel, shard_model
from framework.io import write_json_atomic
from framework.metrics.ranking import RankingMetrics
from framework.models.ranking.model import build_ranking_model
from framework.trainers.common import (
    Prefetcher,
    Progress,
    ScalarLogger,
    environment_info,
    git_commit,
    open_run_dir,
)

logger = logging.getLogger(__name__)


RESUMABLE_CHANGES = (
    "train.epochs", "train.max_steps", "train.run_dir", "train.checkpoint_every", "train.keep_checkpoints",
    "train.resume", "train.log_every", "train.prefetch_batches", "train.progress", "train.tensorboard",
    "train.eval_batch_size", "train.eval_max_examples", "train.eval_every_epochs", "data.path", "sharding.*",
    "model.attention_backend",
)  # fmt: skip
"""Config keys a resumed run may change (fnmatch patterns); any other difference refuses the checkpoint."""


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps taken in total."""
    epoch: int = 0
    """Current epoch (its permutation of the train split)."""
    examples_in_epoch: int = 0
    """Global examples of the current epoch already trained on: the data position, independent of W."""


def load_interactions(cfg: DataConfig) -> Interactions:
    if cfg.source == "movielens":
        assert cfg.path is not None  # validated by DataConfig
        return load_movielens(cfg.path, positive_threshold=cfg.positive_threshold, fmt=cfg.format)
    s = cfg.synthetic
    return generate_synthetic(
        num_users=s.num_users,
        num_items=s.num_items,
        num_events=s.num_events,
        task_names=s.tasks,
        days=s.days,
        seed=s.seed,
    )


def build_data(cfg: RankingJobConfig, inter: Interactions | None = None) -> RankingData:
    return RankingData(
        inter if inter is not None else load_interactions(cfg.data),
        formulation=cfg.model.formulation,
        max_item_hist=cfg.data.max_item_hist,
        max_user_hist=cfg.data.max_user_hist,
        hash_sizes=dict(cfg.model.hash_size),
        num_time_buckets=cfg.data.num_time_buckets,
        split=cfg.data.split,
        test_fraction=cfg.data.test_fraction,
        split_seed=cfg.data.split_seed,
        holdout=cfg.data.holdout,
        validation_fraction=cfg.data.validation_fraction,
        seed=cfg.train.seed,
    )


def loss_fn(logits_BT: torch.Tensor, batch: RankingBatch) -> torch.Tensor:
    """Mean BCE over this batch's examples and tasks (padding rows weigh 0). Ranks average it implicitly:
    DDP and TorchRec's all-to-all both divide gradients by the world size."""
    bce_BT = F.binary_cross_entropy_with_logits(logits_BT, batch.labels, reduction="none")
    return (bce_BT * batch.weights[:, None]).sum() / (batch.batch_size * logits_BT.shape[1])


def train_step(sm: ShardedModel, batch: RankingBatch) -> torch.Tensor:
    sm.model.train()
    sm.optimizer.zero_grad()
    logits_BT = sm.model(batch.sparse, batch.time_buckets, batch.share_index or None)
    loss = loss_fn(logits_BT, batch)
    loss.backward()
    sm.optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: RankingData, env: DistEnv, batch_size: int, max_examples: int | None
) -> dict[str, float]:
    """Gathered per-task AUC / NCE over the test split (every rank returns the same dict)."""
    model.eval()
    metrics = RankingMetrics(list(data.task_names))
    for batch in data.batches(
        "test", batch_size=batch_size, rank=env.rank, world_size=env.world_size, max_examples=max_examples
    ):
        batch = batch.to(env.device)
        metrics.update(model(batch.sparse, batch.time_buckets), batch.labels, batch.weights)
    return metrics.compute()


def checkpoint_state(sm: ShardedModel, state: Any) -> dict[str, Any]:
    """What a checkpoint holds: model, optimizer and the int fields of ``state`` (a dataclass: the data position)."""
    # Trainer counters travel as one int64 tensor: a table-wise rank lacks the tables it does not own, which sends
    # DCP's loader down its pre-2.4 key-compatibility path, where a dict of Python ints is not flattened alike.
    counters = torch.tensor([getattr(state, f.name) for f in fields(state)], dtype=torch.int64)
    return {"model": sm.model.state_dict(), "optim": sm.optimizer.state_dict(), "trainer": counters}


def restore(ckpt_dir: Path, sm: ShardedModel, state: Any) -> None:
    app = checkpoint_state(sm, state)
    Checkpointer.load(ckpt_dir, app)
    sm.model.load_state_dict(app["model"])
    sm.optimizer.load_state_dict(app["optim"])
    for f, value in zip(fields(state), app["trainer"].tolist(), strict=True):
        setattr(state, f.name, int(value))


def train(cfg: RankingJobConfig) -> dict[str, Any]:
    """Run one ranking job; returns the final results (same dict on every rank)."""
    env = init_distributed(cfg.sharding.device)
    run_dir = open_run_dir(cfg, env.is_main)

    torch.manual_seed(cfg.train.seed)
    t_data = time.perf_counter()
    data = build_data(cfg)
    data_seconds = time.perf_counter() - t_data
    collisions = {t: asdict(s) for t, s in data.collision_stats().items()}
    if env.is_main:
        for t, s in collisions.items():
            logger.info(
                "table %s: %d ids → %d rows, collision rate %.4f",
                t,
                s["distinct_ids"],
                data.num_embeddings[t],
                s["collision_rate"],
            )

    model = build_ranking_model(cfg.model, data.num_embeddings, data.task_names, cfg.data.num_time_buckets)
    sm = shard_model(
        model,
        tables=data.num_embeddings,
        embedding_dim=cfg.model.embedding_dim,
        sharding_type=cfg.sharding.sharding_type,
        optim=cfg.optim,
        env=env,
    )
    # Materialize lazily-created optimizer state now, so a fresh run and a resumed run see the same state keys.
    sm.optimizer.init_state()

    B, W = cfg.train.global_batch_size, env.world_size
    if B % W:
        raise ValueError(
            f"train.global_batch_size={B} is not divisible by the world size {W}: every rank takes an equal slice"
        )
    local_batch = B // W
    steps_per_epoch = data.num_batches("train", local_batch, W)
    if steps_per_epoch == 0:
        raise ValueError(
            f"train split has {data.train_indices.size} examples, fewer than one global batch ({B}); "
            "lower train.global_batch_size"
        )
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps is not None:
        total_steps = min(total_steps, cfg.train.max_steps)

    state = TrainState()
    ckpt = Checkpointer(run_dir / "checkpoints", keep=cfg.train.keep_checkpoints, rank=env.rank)
    latest = None if cfg.train.resume == "never" else ckpt.latest()
    if latest is not None:
        saved = Checkpointer.read_meta(latest)
        check_resume_config(
            saved.get("config"), to_dict(cfg), may_change=RESUMABLE_CHANGES, mode=cfg.train.resume, checkpoint=latest
        )
        restore(latest, sm, state)
        if state.examples_in_epoch % B:  # only after train.resume=force with another global batch
            if env.is_main:
                logger.warning(
                    "data: %d examples of epoch %d were trained on, not a multiple of the global batch %d: "
                    "starting epoch %d", state.examples_in_epoch, state.epoch, B, state.epoch + 1,
                )  # fmt: skip
            state.epoch, state.examples_in_epoch = state.epoch + 1, 0
        if env.is_main:
            logger.info(
                "resumed from %s at step %d (epoch %d, example %d of it; written by %d rank(s), now %d)",
                latest, state.step, state.epoch, state.examples_in_epoch, saved["world_size"], W,
            )  # fmt: skip

    meta = {
        "world_size": W,
        "config": to_dict(cfg),
        "plan": sm.plan_summary(),
        "num_embeddings": data.num_embeddings,
        "task_names": list(data.task_names),
    }

    def save(step: int) -> None:
        ckpt.save(step, checkpoint_state(sm, state), meta)

    scalars = ScalarLogger(run_dir / "tb", enabled=cfg.train.tensorboard and env.is_main)
    progress = Progress(total_steps, state.step, B, cfg.train.progress and env.is_main, cfg.model.formulation)
    loss_sum, loss_n = torch.zeros(()), 0
    last_saved = state.step if latest is not None else -1  # a resumed state is already on disk
    epoch_evals: list[dict[str, float]] = []

    def evaluate_now() -> dict[str, float]:
        metrics = evaluate(sm.model, data, env, cfg.train.eval_batch_size, cfg.train.eval_max_examples)
        epoch_evals.append({"epochs": state.step / steps_per_epoch, "step": state.step, **metrics})
        scalars.log({f"{data.holdout}/{k}": v for k, v in metrics.items()}, state.step)
        return metrics

    while state.step < total_steps:
        epoch_batches = data.batches(
            "train",
            batch_size=local_batch,
            rank=env.rank,
            world_size=W,
            epoch=state.epoch,
            start_step=state.examples_in_epoch // B,
        )
        with Prefetcher(epoch_batches, cfg.train.prefetch_batches) as batches:
            for batch in batches:
                loss = train_step(sm, batch.to(env.device))
                state.step += 1
                state.examples_in_epoch += B
                loss_sum += loss.cpu()
                loss_n += 1
                progress.update(loss=float(loss))
                if state.step % cfg.train.log_every == 0:
                    rate = progress.examples_per_second
                    scalars.log({"train/loss": float(loss_sum) / loss_n, "train/examples_per_s": rate}, state.step)
                    loss_sum, loss_n = torch.zeros(()), 0
                if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0:
                    save(state.step)
                    last_saved = state.step
                if state.step >= total_steps:
                    break
            else:
                state.epoch += 1
                state.examples_in_epoch = 0
                if cfg.train.eval_every_epochs and state.epoch % cfg.train.eval_every_epochs == 0:
                    if state.step < total_steps:  # the last epoch's evaluation is the final one below
                        evaluate_now()
    progress.close()
    train_examples_per_s = progress.examples_per_second
    if last_saved != state.step:
        save(state.step)

    t_eval = time.perf_counter()
    test = evaluate_now()
    results = {
        "formulation": cfg.model.formulation,
        "pooling": cfg.model.pooling,
        "steps": state.step,
        "world_size": W,
        "global_batch": B,
        "train_examples_per_s": train_examples_per_s,
        "eval_seconds": time.perf_counter() - t_eval,
        "data_seconds": data_seconds,
        "holdout": data.holdout,
        "test": test,
        "epoch_evals": epoch_evals,
        "collisions": collisions,
        "num_embeddings": data.num_embeddings,
        "plan": sm.plan_summary(),
        "git_commit": git_commit(),
        "env": environment_info(),
        "config": to_dict(cfg),
    }
    scalars.close()
    if env.is_main:
        write_json_atomic(run_dir / "metrics.json", results)
        logger.info("test: %s", {k: round(v, 4) for k, v in test.items()})
    return results
