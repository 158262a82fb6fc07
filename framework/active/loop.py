"""The active-learning loop: pool, labeled set, rounds, budget, retraining, strategies, seeds, resume.

Legend: N = pool, L = labeled, U = unlabeled, C = classes, T = MC-dropout samples.

For each (strategy, seed): the initial labeled set depends on the seed only (every strategy starts from the same
labels: a random draw, or MMCSAL's cold-start pick with ``loop.initial_strategy: mmcsal``, computed once per seed
and kept in ``<run_dir>/cold_start/seed<k>.json``), then each round retrains f (from scratch by default, as the
thesis does; ``loop.warm_start`` continues from the previous round's weights), records test accuracy (and
per-modality accuracy on two-modality pools), and acquires ``per_round`` labels.
``<run_dir>/<strategy>/seed<k>.json`` is rewritten atomically after every round with the labeled set and every
round's record, so a killed run resumes at the next round and, every random draw being seeded by (seed, round),
selects exactly what the uninterrupted run would. Under torchrun every rank runs the loop (training is cheap and
identical), DAO's candidate scoring is split across ranks and gathered, and rank 0 writes the files.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from framework.active import mmcsal
from framework.active import strategies as S
from framework.active.acquisition import select_batch
from framework.active.bmmal import bmmal_select
from framework.active.dao import DAOConfig, dao_scores
from framework.active.data import POOLS, Pool
from framework.active.models import LateFusion, build_model, modality_encoders
from framework.active.report import accuracy_matrix
from framework.active.train import FitConfig, accuracy, embeddings, fit, predict_probs
from framework.checkpoint.dcp import fault_point, save_atomic
from framework.distributed.env import init_distributed
from framework.io import write_json_atomic

logger = logging.getLogger(__name__)

BASELINES = ("random", "least_confidence", "margin", "entropy", "bald", "coreset", "badge", "bmmal")
DAO_VARIANTS = {"dao": None, "dao_topk": "topk", "dao_softrank": "softrank", "dao_softmax": "softmax",
                "dao_power": "power"}  # fmt: skip
STRATEGIES = (*BASELINES, *DAO_VARIANTS)


@dataclass(frozen=True)
class RoundContext:
    pool: Pool
    labeled: torch.Tensor
    unlabeled: torch.Tensor
    model: nn.Module
    seed: int
    round: int


def _stream(seed: int, round_: int, salt: int) -> int:
    return (seed * 1_000 + round_) * 100 + salt


def initial_labels(pool: Pool, n: int, seed: int) -> torch.Tensor:
    return torch.randperm(len(pool), generator=torch.Generator().manual_seed(_stream(seed, 0, 99)))[:n]


def cold_start_labels(cfg: Any, pool: Pool, seed: int, *, write: bool) -> torch.Tensor:
    """The seed's initial labeled set (``loop.initial`` indices), shared by every strategy of the seed."""
    n = cfg.loop.initial
    if cfg.loop.initial_strategy == "random":
        return initial_labels(pool, n, seed)
    path = Path(cfg.loop.run_dir) / "cold_start" / f"seed{seed}.json"
    if path.is_file():
        record = json.loads(path.read_text())
        want = (cfg.loop.initial_strategy, cfg.mmcsal.selector, n)
        have = (record.get("method"), record.get("selector"), len(record.get("labeled", ())))
        if have != want:
            raise ValueError(f"{path} holds another cold start (method, selector, labels) = {have}; expected {want}")
        return torch.tensor(record["labeled"], dtype=torch.int64)
    if pool.num_modalities != 2:
        raise ValueError(f"loop.initial_strategy=mmcsal needs a two-modality pool; {pool.name} has "
                         f"{pool.num_modalities}")  # fmt: skip
    encoders = modality_encoders(tuple(tuple(x.shape[1:]) for x in pool.x), cfg.loop.width)
    picked, info = mmcsal.cold_start(*pool.x, n, cfg.mmcsal, _stream(seed, 0, 98), encoders)
    if write:
        record = {"method": "mmcsal", "selector": cfg.mmcsal.selector, "seed": seed, "labeled": picked.tolist()}
        write_json_atomic(path, {**record, **info})
    logger.info("mmcsal cold start, seed %d: %d labels in %.1f s", seed, n, info["seconds"])
    return picked


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def surrogate_probs(ctx: RoundContext, fit_cfg: FitConfig, arch: str) -> torch.Tensor:
    """DAO's surrogate pi (architecture ``arch``), trained on the labeled set this round: pi(y|x) on the pool [U, C]."""
    pool, lab = ctx.pool, ctx.labeled
    torch.manual_seed(_stream(ctx.seed, ctx.round, 3))
    pi = build_model(arch, tuple(tuple(x.shape[1:]) for x in pool.x), pool.num_classes)
    fit(pi, tuple(x[lab] for x in pool.x), pool.y[lab], fit_cfg, seed=_stream(ctx.seed, ctx.round, 4))
    return predict_probs(pi, tuple(x[ctx.unlabeled] for x in pool.x))


def sharded_dao_scores(ctx: RoundContext, cfg: DAOConfig, pi_U: torch.Tensor) -> torch.Tensor:
    """DAO scores of every unlabeled candidate; under torchrun the candidates are cut into chunks of
    ``dao.chunk``, rank r scores chunks r, r + W, ... and the scores are all-gathered. A chunk is the same set of
    candidates whatever W is, so each score is computed by the same operations on the same data and W ranks select
    exactly what one does (tests/distributed/test_active_dao_ranks.py). Splitting candidates more finely would not: CG
    amplifies the last-bit differences that batched HVPs of another batch size make, to ~1e-5 relative."""
    pool, lab, unl = ctx.pool, ctx.labeled, ctx.unlabeled
    x_L, y_L = tuple(x[lab] for x in pool.x), pool.y[lab]
    x_U = tuple(x[unl] for x in pool.x)
    rank, world = _rank_world()
    chunks = list(torch.arange(unl.numel()).split(cfg.chunk))
    owned = chunks[rank::world]
    mine = torch.cat(owned) if owned else torch.zeros(0, dtype=torch.int64)
    local = dao_scores(ctx.model, x_L, y_L, x_U, pi_U, cfg, seed=_stream(ctx.seed, ctx.round, 5), candidates=mine)
    if world == 1:
        return local
    width = len(chunks[0::world]) * cfg.chunk
    padded = torch.zeros(width, dtype=torch.float64)
    padded[: local.numel()] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    scores = torch.empty(unl.numel(), dtype=torch.float64)
    for r, g in enumerate(gathered):
        start = 0
        for c in chunks[r::world]:
            scores[c] = g[start : start + c.numel()]
            start += c.numel()
    return scores


def select(strategy: str, ctx: RoundContext, k: int, cfg: Any) -> torch.Tensor:
    """Positions into ``ctx.unlabeled`` of the k candidates ``strategy`` acquires."""
    pool, unl = ctx.pool, ctx.unlabeled
    x_U = tuple(x[unl] for x in pool.x)
    gen = torch.Generator().manual_seed(_stream(ctx.seed, ctx.round, 1))
    if strategy == "random":
        return torch.randperm(unl.numel(), generator=gen)[:k]
    if strategy in S.UNCERTAINTY:
        return S.top_k(S.UNCERTAINTY[strategy](predict_probs(ctx.model, x_U)), k)
    if strategy == "bald":
        probs = S.mc_dropout_probs(ctx.model, x_U, cfg.loop.bald_samples, seed=_stream(ctx.seed, ctx.round, 2))
        return S.top_k(S.bald(probs), k)
    if strategy == "coreset":
        emb_U = embeddings(ctx.model, x_U)
        emb_L = embeddings(ctx.model, tuple(x[ctx.labeled] for x in pool.x))
        return S.k_center_greedy(emb_U, emb_L, k)
    if strategy == "badge":
        g = S.gradient_embeddings(predict_probs(ctx.model, x_U), embeddings(ctx.model, x_U))
        return S.kmeans_pp_seeding(g, k, gen)
    if strategy == "bmmal":
        if not isinstance(ctx.model, LateFusion):
            raise ValueError("bmmal needs loop.model=late_fusion on a two-modality pool")
        return bmmal_select(ctx.model, *x_U, k, gen, shards=cfg.loop.bmmal_shards)
    if strategy in DAO_VARIANTS:
        scores = sharded_dao_scores(ctx, cfg.dao, surrogate_probs(ctx, cfg.fit, cfg.loop.surrogate))
        method = DAO_VARIANTS[strategy] or cfg.dao.acquisition
        return select_batch(scores, k, method, beta=cfg.dao.beta, generator=gen)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def load_pool(cfg: Any) -> Pool:
    d = cfg.data
    if d.pool == "shapes":
        return POOLS["shapes"](num_pool=d.num_pool, num_test=d.num_test, image_size=d.image_size, seed=d.seed)
    return POOLS[d.pool](seed=d.seed)


def run_one(cfg: Any, pool: Pool, strategy: str, seed: int, *, write: bool) -> dict[str, Any]:
    """One (strategy, seed) curve; resumes from its JSON if present."""
    path = Path(cfg.loop.run_dir) / strategy / f"seed{seed}.json"
    weights_path = path.with_suffix(".pt")
    shape = tuple(tuple(x.shape[1:]) for x in pool.x)
    if path.is_file():
        state = json.loads(path.read_text())
        if state.get("strategy") != strategy or state.get("seed") != seed:
            raise ValueError(f"{path} belongs to another run ({state.get('strategy')}, seed {state.get('seed')})")
        if state.get("initial_strategy", "random") != cfg.loop.initial_strategy:
            raise ValueError(f"{path} started from a {state.get('initial_strategy', 'random')} cold start; "
                             f"loop.initial_strategy is {cfg.loop.initial_strategy}")  # fmt: skip
        labeled = torch.tensor(state["labeled"], dtype=torch.int64)
    else:
        labeled = cold_start_labels(cfg, pool, seed, write=write)
        state = {"strategy": strategy, "seed": seed, "pool": pool.name, "initial_strategy": cfg.loop.initial_strategy,
                 "rounds": [], "labeled": labeled.tolist()}  # fmt: skip
    fit_cfg = cfg.fit
    for r in range(len(state["rounds"]), cfg.loop.rounds + 1):
        t0 = time.perf_counter()
        torch.manual_seed(_stream(seed, r, 0))
        model = build_model(cfg.loop.model, shape, pool.num_classes, cfg.loop.width)
        if cfg.loop.warm_start and r > 0 and weights_path.is_file():
            model.load_state_dict(torch.load(weights_path, weights_only=True))
        fit(model, tuple(x[labeled] for x in pool.x), pool.y[labeled], fit_cfg, seed=_stream(seed, r, 6))
        record: dict[str, Any] = {"round": r, "labels": labeled.numel(),
                                  "accuracy": accuracy(model, pool.x_test, pool.y_test),
                                  "fit_seconds": time.perf_counter() - t0}  # fmt: skip
        if isinstance(model, LateFusion):
            record["per_modality"] = per_modality_accuracy(model, pool)
        if r < cfg.loop.rounds:
            mask = torch.ones(len(pool), dtype=torch.bool)
            mask[labeled] = False
            unlabeled = torch.nonzero(mask)[:, 0]
            t1 = time.perf_counter()
            ctx = RoundContext(pool, labeled, unlabeled, model, seed, r)
            picked = unlabeled[select(strategy, ctx, cfg.loop.per_round, cfg)]
            record["select_seconds"] = time.perf_counter() - t1
            record["selected"] = picked.tolist()
            labeled = torch.cat([labeled, picked])
        state["rounds"].append(record)
        state["labeled"] = labeled.tolist()
        if write:
            if cfg.loop.warm_start:
                save_atomic(model.state_dict(), weights_path)
            write_json_atomic(path, state)
        fault_point("kill_after_round", f"{strategy}:{seed}:{r}")
        logger.info("%s seed %d round %d: %d labels, accuracy %.4f", strategy, seed, r, record["labels"],
                    record["accuracy"])  # fmt: skip
    return state


@torch.no_grad()
def per_modality_accuracy(model: LateFusion, pool: Pool) -> dict[str, float]:
    """Test accuracy of each head: C_1 (image only), C_2 (second modality only), C_mm (fused)."""
    model.eval()
    heads = model.heads(*pool.x_test)
    return {name: float((h.argmax(1) == pool.y_test).float().mean()) for name, h in zip(("m1", "m2", "mm"), heads,
                                                                                     strict=True)}  # fmt: skip


def run(cfg: Any) -> dict[str, dict[int, dict[str, Any]]]:
    """Every strategy x seed of the config; returns {strategy: {seed: state}}."""
    pool = load_pool(cfg)
    rank, _ = _rank_world()
    return {s: {seed: run_one(cfg, pool, s, seed, write=rank == 0) for seed in cfg.loop.seeds}
            for s in cfg.loop.strategies}  # fmt: skip


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def summarize(results: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per strategy: labels per round and accuracy mean/std over seeds, per round."""
    out: dict[str, Any] = {}
    for strategy, by_seed in results.items():
        acc = accuracy_matrix(by_seed)
        first = next(iter(by_seed.values()))
        out[strategy] = {
            "labels": [r["labels"] for r in first["rounds"]],
            "accuracy_mean": acc.mean(0).tolist(),
            "accuracy_std": (acc.std(0, ddof=1) if acc.shape[0] > 1 else np.zeros(acc.shape[1])).tolist(),
            "select_seconds_mean": _mean([r.get("select_seconds", 0.0) for st in by_seed.values()
                                          for r in st["rounds"][:-1]]),
            "fit_seconds_mean": _mean([r["fit_seconds"] for st in by_seed.values() for r in st["rounds"]]),
        }  # fmt: skip
    return out


def train(cfg: Any) -> dict[str, Any]:
    """``family: active`` entry (``scalefirst al``, launch.train): every strategy x seed, then the summary."""
    init_distributed("cpu")
    results = run(cfg)
    summary = summarize(results)
    if _rank_world()[0] == 0:
        write_json_atomic(Path(cfg.loop.run_dir) / "summary.json", summary)
    return summary
