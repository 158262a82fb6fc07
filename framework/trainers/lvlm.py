"""LVLM trainer: scene world → LLaVA-architecture model → (LoRA) → DeepSpeed ZeRO (or DDP) → checkpoints → merged
export → CHAIR / POPE evaluation.

Two stages, as LLaVA-1.5 (``train.stage``):

* ``pretrain``: image → detailed description (the first exchange of each conversation); the parts named in
  ``train.trainable`` are trained fully, the others frozen.
* ``instruct``: the whole conversations; PEFT LoRA on the language model's linear layers (``lora.targets``, default
  all), the projector trained at ``optim.projector_lr``, everything else frozen. ``train.init_from`` names the
  run whose final model is the base (typically the pretrain stage).

Loss (``loss.kind``): ``mle`` is the mean cross-entropy of the response tokens; ``reweighted`` multiplies each token's
cross-entropy by its visual-dependence weight (eq. 5.5, framework/losses/visual_dependence.py) from
``loss.start_fraction`` of ``train.max_steps`` on. d is computed per micro-batch with no grad in eval mode through
the engine (so ZeRO-3 gathering and autocast apply): one clean and one noised forward, the noise drawn per sample.

Normalization: each optimizer step's loss is sum_t w_t nll_t / (supervised tokens of the whole global batch), so
the gradient does not depend on how the global batch is split over ranks and micro-batches (a per-rank mean would
weight short answers more on ranks with fewer tokens). Data: an indexed set (framework/data/lvlm/dataset.py), so the
samples of step s are a function of (seed, s): resuming at any world size continues the exact sample stream.
Randomness (LoRA dropout) is re-seeded from (seed, step, rank) at every step, so a same-world resume is exact.

Data filter (``data.filter_with``): the named fine-tuned run's merged model scores every training sample by
sum_t d(y_t) (ranks score strided slices; scores all-gathered); ``data.drop_top`` / ``drop_bottom`` of them are
dropped; ``run_dir/filter.json`` records scores and dropped ids.

Outputs in ``run_dir``: ``config.yaml``, ``checkpoints/step_*`` (engine checkpoints: trainable parameters + AdamW
moments, gathered under ZeRO-3), ``final/model.pt`` (the merged plain model's fp32 state dict), ``final/hf/``
(``save_pretrained`` of it + the tokenizer), ``metrics.json``, and with ``data.eval_limit`` > 0 ``eval.json`` +
``examples.png`` (``scalefirst eval lvlm`` writes the same).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from framework.checkpoint.dcp import Checkpointer, save_atomic
from framework.checkpoint.resume import check_resume_config
from framework.config import to_dict
from framework.config.schema import LVLMJobConfig
from framework.data.lvlm.chat import IGNORE
from framework.data.lvlm.dataset import SceneTrainSet, load_train_set, micro_rows, step_rows
from framework.data.lvlm.tokenizer import scene_tokenizer
from framework.distributed.engine import Engine, resolve_checkpoint
from framework.distributed.engine_factory import build_engine
from framework.distributed.env import init_distributed
from framework.io import write_json_atomic
from framework.losses.visual_dependence import (
    batch_dependence,
    filter_by_dependence,
    reweighting_active,
    token_classes,
    token_weights,
    weighted_nll,
)
from framework.models.lvlm.lora import apply_lora, merged_model
from framework.models.lvlm.model import build_lvlm, lvlm_parts
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
    "train.log_every", "train.progress", "train.tensorboard", "data.scenes", "data.eval_limit", "train.init_from",
    "data.filter_with", "engine.backend", "engine.zero_stage", "engine.device", "train.batch_size",
    "engine.grad_accum_steps",
)  # fmt: skip
"""Config keys a resumed run may change; any other difference refuses the checkpoint. The per-rank batch and the
accumulation may change with the world size as long as the global batch stays (checked at resume)."""
STAT_KEYS = ("tokens", "image_positive", "image_negative", "weight_positive", "weight_negative", "weight_invariant")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0])


def special_ids(tokenizer) -> dict[str, int]:
    return {"image_token_id": tokenizer.convert_tokens_to_ids("<image>"), "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}  # fmt: skip


def load_final_model(run_dir: str | Path) -> tuple[nn.Module, LVLMJobConfig]:
    """The merged fp32 model of a finished LVLM run and its config (CPU, eval mode)."""
    cfg, state = finished_run(run_dir, "lvlm", FINAL_MODEL)
    tok = scene_tokenizer()
    model = build_lvlm(cfg.model, len(tok), **special_ids(tok))
    model.load_state_dict(state)
    return model.eval(), cfg


def build_model(cfg: LVLMJobConfig, tokenizer) -> nn.Module:
    """The plain model of this stage (same on every rank): random init from the seed or ``train.init_from``'s final
    model; pretrain freezes the parts not in ``train.trainable``, instruct wraps it in LoRA."""
    torch.manual_seed(cfg.train.seed)
    model = build_lvlm(cfg.model, len(tokenizer), **special_ids(tokenizer))
    if cfg.train.init_from:
        base, base_cfg = load_final_model(cfg.train.init_from)
        if base_cfg.model != cfg.model:
            raise ValueError(f"train.init_from={cfg.train.init_from}: its model config {base_cfg.model} differs from "
                             f"this run's {cfg.model}")  # fmt: skip
        model.load_state_dict(base.state_dict())
    if cfg.train.stage == "pretrain":
        for part, module in lvlm_parts(model).items():
            module.requires_grad_(part in cfg.train.trainable)
        return model
    torch.manual_seed(cfg.train.seed + 1)  # LoRA A matrices
    return apply_lora(model, cfg.lora)


def export_merged(cfg: LVLMJobConfig, tokenizer, state: dict[str, torch.Tensor]) -> nn.Module:
    """The plain (merged) model from the engine's consolidated state of this stage's model."""
    model = build_model(cfg, tokenizer)
    model.load_state_dict(state)
    return merged_model(model) if cfg.train.stage == "instruct" else model


def sample_noise(rows: list[int], shape: tuple[int, ...], seed: int, step: int) -> torch.Tensor:
    """Per-sample VCD noise: drawn from (seed, step, sample), the same whatever rank or micro-batch holds it."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(_seed(seed, step, r)))
                        for r in rows])  # fmt: skip


def dependence_stats(d: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, threshold: float) -> torch.Tensor:
    """Sums for logging: [tokens, image-positive, image-negative, weight sums of positive/negative/invariant]."""
    sup = labels != IGNORE
    cls = token_classes(d, threshold)
    out = [sup.sum(), (sup & (cls == 1)).sum(), (sup & (cls == -1)).sum()]
    out += [weights[sup & (cls == c)].sum() for c in (1, -1, 0)]
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in out])


def micro_step(
    engine: Engine, data: SceneTrainSet, rows: list[int], *, cfg: LVLMJobConfig, eos_id: int, pad_id: int,
    step: int, n_tokens: int, reweight: bool,
) -> tuple[float, torch.Tensor | None]:  # fmt: skip
    """Forward/backward of one micro-batch. Returns (its share of the step's loss, dependence sums or None)."""
    batch = {k: v.to(engine.device) for k, v in data.batch(rows, pad_id).items()}
    pixels = batch.pop("pixel_values")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    labels = batch["labels"][:, 1:]
    weights, stats = None, None
    if reweight:
        engine.eval()
        noise = sample_noise(rows, tuple(pixels.shape[1:]), cfg.train.seed, step)
        d, _ = batch_dependence(lambda **kw: engine(**kw, use_cache=False), batch, pixels, cfg.loss.noise_step,
                                noise=noise)  # fmt: skip
        engine.train()
        weights = token_weights(d, labels, eos_id, tau=cfg.loss.tau, variant=cfg.loss.variant)
        stats = dependence_stats(d, labels, weights, cfg.loss.threshold)
    logits = engine(**inputs, pixel_values=pixels, use_cache=False)["logits"][:, :-1]
    local_tokens = int((labels != IGNORE).sum())
    # weighted_nll divides by this micro-batch's tokens; rescale to the global-batch normalization (module doc),
    # times world size x accumulation, which the engine's gradient averaging and 1/accum scaling divide out.
    share = weighted_nll(logits, labels, weights) * local_tokens / n_tokens
    engine.backward(share * engine.world_size * engine.grad_accum_steps)
    return float(share.detach()), stats


def score_samples(model: nn.Module, data: SceneTrainSet, *, pad_id: int, seed: int, noise_step: int, rank: int,
                  world_size: int, batch_size: int = 32) -> list[float]:  # fmt: skip
    """sum_t d(y_t) of every sample (the data filter's score): each rank scores a strided slice, then all-gather."""
    mine = list(range(rank, len(data), world_size))
    scores: dict[int, float] = {}
    model.eval()
    for s in range(0, len(mine), batch_size):
        rows = mine[s : s + batch_size]
        batch = data.batch(rows, pad_id)
        pixels = batch.pop("pixel_values")
        noise = sample_noise(rows, tuple(pixels.shape[1:]), seed, -1)
        d, _ = batch_dependence(model, batch, pixels, noise_step, noise=noise)
        scores.update(zip(rows, d.sum(1).tolist(), strict=True))
    if world_size > 1:
        parts: list[Any] = [None] * world_size
        dist.all_gather_object(parts, scores)
        scores = {k: v for p in parts for k, v in p.items()}
    return [scores[i] for i in range(len(data))]


def apply_filter(cfg: LVLMJobConfig, data: SceneTrainSet, run_dir: Path, env, pad_id: int) -> list[int]:
    """Indices kept for training (all without ``data.filter_with``); rank 0 writes run_dir/filter.json."""
    if not cfg.data.filter_with:
        return list(range(len(data)))
    scorer, _ = load_final_model(cfg.data.filter_with)
    scores = score_samples(scorer, data, pad_id=pad_id, seed=cfg.train.seed, noise_step=cfg.loss.noise_step,
                           rank=env.rank, world_size=env.world_size)  # fmt: skip
    kept = filter_by_dependence(scores, drop_top=cfg.data.drop_top, drop_bottom=cfg.data.drop_bottom)
    if env.is_main:
        kept_set = set(kept)
        write_json_atomic(run_dir / "filter.json", {
            "scored_with": cfg.data.filter_with, "drop_top": cfg.data.drop_top, "drop_bottom": cfg.data.drop_bottom,
            "kept": len(kept), "dropped": [data.ids[i] for i in range(len(data)) if i not in kept_set],
            "scores": dict(zip(data.ids, scores, strict=True)),
        })  # fmt: skip
        logger.info("data filter: kept %d of %d samples (scores from %s)", len(kept), len(data), cfg.data.filter_with)
    return kept


def evaluate_run(model: nn.Module, cfg: LVLMJobConfig, scenes: str | Path, out_dir: str | Path,
                 limit: int | None = None, decoding: str = "greedy", matcher: Any = None,
                 halc_cfg: Any = None) -> dict[str, Any]:  # fmt: skip
    """CHAIR / POPE / length of ``model`` on the scene world's eval split with ``decoding`` (HALC: ``matcher``
    factory and ``halc_cfg``, see :func:`framework.evaluation.lvlm_eval.evaluate_lvlm`); writes eval.json and
    examples.png (``eval_<decoding>.json`` / ``examples_<decoding>.png`` for a decoding other than greedy)."""
    from framework.data.lvlm.dataset import read_split
    from framework.evaluation.lvlm_eval import evaluate_lvlm, plot_examples

    tok = scene_tokenizer()
    limit = limit if limit is not None else cfg.data.eval_limit
    res = evaluate_lvlm(model, tok, scenes, image_size=cfg.model.image_size, image_tokens=cfg.model.image_tokens,
                        limit=limit, decoding=decoding, matcher=matcher, halc_cfg=halc_cfg)  # fmt: skip
    out_dir = Path(out_dir)
    suffix = "" if decoding == "greedy" else f"_{decoding}"
    write_json_atomic(out_dir / f"eval{suffix}.json", res)
    images = {s["id"]: s["image"] for s in read_split(scenes, "eval", limit)}
    plot_examples(res["examples"], images, out_dir / f"examples{suffix}.png")
    return res


def train_turns(cfg: LVLMJobConfig) -> str:
    if cfg.data.turns != "auto":
        return cfg.data.turns
    return "description" if cfg.train.stage == "pretrain" else "shuffled"


def train(cfg: LVLMJobConfig) -> dict[str, Any]:
    """Run one LVLM job; returns the results dict (rank 0 also writes run_dir/metrics.json)."""
    env = init_distributed(cfg.engine.device)
    run_dir = open_run_dir(cfg, env.is_main)
    tok = scene_tokenizer()
    ids = special_ids(tok)
    data = load_train_set(cfg.data.scenes, tok, image_size=cfg.model.image_size, image_tokens=cfg.model.image_tokens,
                          max_length=cfg.data.max_length, turns=train_turns(cfg), limit=cfg.data.train_limit)  # fmt: skip
    kept = apply_filter(cfg, data, run_dir, env, ids["pad_token_id"])

    model = build_model(cfg, tok)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    group_lrs = dict(cfg.optim.group_lrs)
    if cfg.optim.projector_lr:
        group_lrs = {"multi_modal_projector": cfg.optim.projector_lr, **group_lrs}
    engine = build_engine(model, cfg.engine, cfg.optim, micro_batch_size=cfg.train.batch_size,
                          max_steps=cfg.train.max_steps, env=env, keep_checkpoints=cfg.train.keep_checkpoints,
                          group_lrs=group_lrs)  # fmt: skip
    accum, B, W = cfg.engine.grad_accum_steps, cfg.train.batch_size, env.world_size
    global_batch = B * W * accum
    ckpt_root = run_dir / "checkpoints"
    latest = None if cfg.train.resume == "never" else resolve_checkpoint(ckpt_root)
    if latest is not None:
        saved = Checkpointer.read_meta(latest)
        check_resume_config(saved.get("config"), to_dict(cfg), may_change=RESUMABLE_CHANGES, mode=cfg.train.resume,
                            checkpoint=latest)  # fmt: skip
        if saved["global_batch_size"] != global_batch:
            raise ValueError(
                f"{latest}: written with global batch {saved['global_batch_size']}, this run has {global_batch} "
                f"({W} ranks x train.batch_size {B} x engine.grad_accum_steps {accum}); the samples of a step depend "
                "on it: keep the global batch when resuming at another world size"
            )
        engine.load(latest)  # the data position is the step: nothing per rank to restore
        if env.is_main:
            logger.info("resumed at optimizer step %d from %s", engine.global_step, latest)

    if env.is_main:
        logger.info(
            "lvlm %s (%s loss): %.2fM params, %.2fM trainable, %d samples (%d kept), global batch %d (%d ranks x %d x "
            "%d accum), backend %s%s", cfg.train.stage, cfg.loss.kind, n_params / 1e6, n_trainable / 1e6, len(data),
            len(kept), global_batch, W, B, accum, cfg.engine.backend,
            f" ZeRO-{cfg.engine.zero_stage}" if cfg.engine.backend == "deepspeed" else "",
        )  # fmt: skip

    def save() -> None:
        engine.save(ckpt_root, client_state={"step": engine.global_step}, extra_meta={"config": to_dict(cfg)})

    scalars = ScalarLogger(run_dir / "tb", enabled=cfg.train.tensorboard and env.is_main)
    progress = Progress(cfg.train.max_steps, engine.global_step, global_batch, cfg.train.progress and env.is_main,
                        f"lvlm {cfg.train.stage}")  # fmt: skip
    history: list[dict[str, float]] = []
    window: list[float] = []
    stat_sum = torch.zeros(len(STAT_KEYS), dtype=torch.float64)
    step_seconds: list[tuple[bool, float]] = []
    last_saved = engine.global_step if latest is not None else -1
    t_start, start_step = time.perf_counter(), engine.global_step
    engine.train()
    try:
        while engine.global_step < cfg.train.max_steps:
            step = engine.global_step
            torch.manual_seed(_seed(cfg.train.seed, step, env.rank))  # LoRA dropout: a function of the step
            rows = step_rows(kept, step, global_batch, cfg.train.seed)
            n_tokens = data.supervised_tokens(rows)
            reweight = (cfg.loss.kind == "reweighted" and cfg.loss.tau > 0
                        and reweighting_active(step, cfg.train.max_steps, cfg.loss.start_fraction))  # fmt: skip
            t0 = time.perf_counter()
            loss, stepped = 0.0, False
            for m in range(accum):
                share, stats = micro_step(engine, data, micro_rows(rows, m, env.rank, W, B), cfg=cfg,
                                          eos_id=ids["eos_token_id"], pad_id=ids["pad_token_id"], step=step,
                                          n_tokens=n_tokens, reweight=reweight)  # fmt: skip
                loss += share
                if stats is not None:
                    stat_sum += stats
                stepped = engine.step()
            if not stepped:
                raise RuntimeError(f"engine did not step after {accum} micro-batches (engine.grad_accum_steps)")
            step_seconds.append((reweight, time.perf_counter() - t0))
            window.append(loss)
            progress.update(loss=loss * W)  # rank 0's share, scaled: an estimate between log steps
            step = engine.global_step
            if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
                # Each rank's loss is its share of the global-token mean: their sum is the step's loss.
                sums = torch.cat([torch.tensor([sum(window)], dtype=torch.float64), stat_sum])
                if W > 1:
                    dist.all_reduce(sums)
                stat_sum = sums[1:]
                row = {"step": step, "loss": sums[0].item() / len(window), "lr": engine.lr(),
                       "samples_per_s": progress.examples_per_second, "reweighting": float(reweight)}  # fmt: skip
                if stat_sum[0] > 0:
                    n = stat_sum[0].item()
                    pos, neg = stat_sum[1].item(), stat_sum[2].item()
                    inv = n - pos - neg
                    row |= {"share_image_positive": pos / n, "share_image_negative": neg / n,
                            "share_image_invariant": inv / n,
                            "mean_weight_positive": stat_sum[3].item() / max(pos, 1),
                            "mean_weight_negative": stat_sum[4].item() / max(neg, 1),
                            "mean_weight_invariant": stat_sum[5].item() / max(inv, 1)}  # fmt: skip
                history.append(row)
                scalars.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step)
                window.clear()
                stat_sum.zero_()
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                save()
                last_saved = step
    finally:
        progress.close()
    train_seconds = time.perf_counter() - t_start
    steps_run = engine.global_step - start_step
    if last_saved != engine.global_step:
        save()

    state = engine.consolidated_state_dict()  # collective: LoRA/projector gathered under ZeRO-3, frozen base too
    results: dict[str, Any] = {
        "stage": cfg.train.stage, "loss_kind": cfg.loss.kind, "steps": engine.global_step, "world_size": W,
        "global_batch": global_batch, "params": n_params, "trainable_params": n_trainable,
        "samples": len(data), "kept_samples": len(kept),
        "samples_per_s": steps_run * global_batch / train_seconds if train_seconds > 0 and steps_run else 0.0,
        "step_seconds": {k: _mean([t for r, t in step_seconds if r == flag])
                         for k, flag in (("mle", False), ("reweighted", True))},
        "final": history[-1] if history else {}, "history": history,
        "engine": {"backend": cfg.engine.backend, "zero_stage": cfg.engine.zero_stage,
                   "precision": cfg.engine.precision},
        "git_commit": git_commit(), "env": environment_info(), "config": to_dict(cfg),
    }  # fmt: skip
    scalars.close()
    if env.is_main:
        merged = export_merged(cfg, tok, state).eval()
        save_atomic(merged.state_dict(), run_dir / FINAL_MODEL)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Writing model shards" bar per save: noise
        merged.save_pretrained(run_dir / "final" / "hf")
        tok.save_pretrained(run_dir / "final" / "hf")
        if cfg.data.eval_limit:
            res = evaluate_run(merged, cfg, cfg.data.scenes, run_dir)
            results["eval"] = {k: res[k] for k in ("chair_s", "chair_i", "recall", "length", "pope_f1", "pope")}
        write_json_atomic(run_dir / "metrics.json", results)
        ev = results.get("eval")
        logger.info("done: %d steps, loss %.4f%s", engine.global_step, results["final"].get("loss", float("nan")),
                    "" if ev is None else ", eval " + " ".join(f"{k} {ev[k]:.3f}" for k in
                                                               ("chair_s", "chair_i", "recall", "pope_f1", "length")))  # fmt: skip
    return results


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
