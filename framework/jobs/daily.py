"""Recurring daily training (UCR chapter §3.5.2): day D trains from day D-1's committed model, one pass over D's
rows in time order, and is evaluated on the first ``train.eval_examples`` rows of day D+1.

Every rank runs :func:`run` (family ``daily``, under torchrun; ``scalefirst daily`` holds the job's lock around it).
Per day (framework/jobs/layout.py for the directory):

1. **Featurize** (rank 0; framework/data/logs/features.py): day D's raw rows, with history lists from the state after
   D-1, into ``work/D/features``, and the state after D into ``work/D/state.npz``. Cached: a rerun of a killed day
   (or a day that the previous day's evaluation already featurized) reuses them. Other ranks wait at a barrier.
2. **Ids**: each table's id space after D-1 (``vocab.<table>.npy``) observes D's target ids (framework/data/logs/ids.py):
   ``grow`` appends rows for new ids, ``hash`` keeps its size. Every rank computes the same from the features.
3. **Model**: built with the new row counts (fresh rows seeded by (seed, day)), sharded (framework/distributed/
   torchrec_sharding.py), then warm-started from D-1's checkpoint through :func:`~framework.checkpoint.grow.load_grown`
   (old rows and their optimizer state kept) — or resumed from the day's own mid-day checkpoint when a killed run
   left one (``work/D/checkpoints``, same sizes, any world size: the position is the row position in the day).
4. **Train**: global batches of ``train.global_batch_size`` positions, rank r taking its slice (framework/data/logs/
   reader.py: ``rank_slices``), padded to an equal local size. The positions trained are counted and summed across
   ranks and checkpoints: ``train.rows_trained`` must equal the day's rows (every row exactly once).
5. **Evaluate** (when D+1 exists in the logs): D+1 is featurized from the state after D (into ``work/D+1``, which
   D+1's own run then reuses); AUC/NCE per task on its first ``eval_examples`` rows, NCE of the main task per
   activeness segment, and NCE over ``eval_windows`` windows of D+1 (the frozen model's decay).
6. **Commit** (framework/jobs/layout.py): checkpoint, state, vocabularies and metrics into ``days/D.partial``, then
   the rename. A committed day is never run again; ``history.jsonl`` gets its line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from framework.checkpoint.dcp import Checkpointer
from framework.checkpoint.grow import load_grown
from framework.checkpoint.resume import check_resume_config
from framework.config import save_config, to_dict
from framework.config.loader import load_raw
from framework.config.schema import DailyJobConfig
from framework.data.logs.batches import make_log_batch
from framework.data.logs.clustering import UserClusters
from framework.data.logs.features import FeatureReader, featurize_logs
from framework.data.logs.history import HistoryState
from framework.data.logs.ids import TableIds
from framework.data.logs.reader import rank_slices
from framework.data.logs.schema import LogSchema, day_name, day_parts, list_days
from framework.data.ranking.batches import RankingBatch
from framework.distributed.env import DistEnv, init_distributed
from framework.distributed.torchrec_sharding import ShardedModel, shard_model
from framework.io import write_json_atomic
from framework.jobs.layout import JobDir, plan_days
from framework.metrics.ranking import RankingMetrics
from framework.models.ranking.embeddings import TABLES_BY_FORMULATION
from framework.models.ranking.model import build_ranking_model
from framework.trainers.common import Prefetcher, Progress, environment_info, git_commit
from framework.trainers.ranking import checkpoint_state, restore, train_step

logger = logging.getLogger(__name__)

RESUMABLE_CHANGES = (
    "job.*", "train.progress", "train.log_every", "train.checkpoint_every", "train.tensorboard", "train.resume",
    "train.eval_batch_size", "sharding.*", "model.attention_backend", "logs.max_bad_records", "logs.generate.*",
)  # fmt: skip
"""Config keys that may differ between the days of one job (anything else is refused: it would be another job)."""

MAIN_TASK_DEFAULT = "click"


@dataclass
class DayState:
    """The data position of a day in progress (saved with every mid-day checkpoint; global over ranks)."""

    step: int = 0
    rows: int = 0
    """Positions of the day consumed: the next global batch starts here."""
    trained_count: int = 0
    """Real (unpadded) rows trained so far, summed over ranks."""
    trained_sum: int = 0
    """Sum of their positions (with the count: every row exactly once <=> count = N and sum = N(N-1)/2)."""


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _check_job_config(cfg: DailyJobConfig, job: JobDir, env: DistEnv) -> None:
    """The first run writes job_dir/config.yaml; later runs must match it up to :data:`RESUMABLE_CHANGES`."""
    path = job.root / "config.yaml"
    if path.is_file():
        saved, _ = load_raw(path)
        check_resume_config(saved, to_dict(cfg), may_change=RESUMABLE_CHANGES, mode=cfg.train.resume, checkpoint=path)
    elif env.is_main:
        job.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, path)
    _barrier()


def run(cfg: DailyJobConfig) -> dict[str, Any]:
    """Run the planned days of the job on every rank; returns ``{"days": {day: metrics or "committed"}}``."""
    env = init_distributed(cfg.sharding.device)
    job = JobDir(cfg.train.run_dir)
    schema = LogSchema(tuple(cfg.logs.labels), cfg.logs.negative)
    _check_job_config(cfg, job, env)
    log_days = list_days(cfg.logs.root)
    days = plan_days(job, log_days, cfg.job.date, cfg.job.catch_up)
    out: dict[str, Any] = {}
    for day in days:
        if job.is_committed(day):
            if env.is_main:
                logger.info("day %s is already committed (%s): nothing to do", day, job.day_dir(day))
            out[day.isoformat()] = "committed"
            continue
        out[day.isoformat()] = run_day(cfg, env, job, schema, log_days, day)
    return {"days": out}


def _featurize(cfg: DailyJobConfig, env: DistEnv, job: JobDir, schema: LogSchema, log_days: list[dt.date],
               day: dt.date, prev_state: Path | None) -> tuple[Path, Path, dict[str, Any]]:  # fmt: skip
    """(features root, state-after-day path, reader stats) of ``day``; rank 0 computes them unless cached."""
    work = job.work_dir(day)
    features, state_path, stats_path = work / "features", work / "state.npz", work / "featurize.json"
    done = (features / day_name(day) / "_SUCCESS").is_file() and state_path.is_file() and stats_path.is_file()
    if env.is_main and not done:
        t0 = time.perf_counter()
        state = (HistoryState.load(prev_state, cfg.history, schema.positives) if prev_state
                 else HistoryState(cfg.history, schema.positives))  # fmt: skip
        stats = featurize_logs(cfg.logs.root, day, log_days.index(day), state, features, schema,
                               max_bad_records=cfg.logs.max_bad_records, fmt=cfg.logs.format)  # fmt: skip
        state.save(state_path)
        stats |= {"seconds": time.perf_counter() - t0, "state": state.nbytes()}
        write_json_atomic(stats_path, stats)
        logger.info("featurized %s: %d rows in %.1f s", day, stats["rows"], stats["seconds"])
    _barrier()
    return features, state_path, json.loads(stats_path.read_text())


def _table_ids(cfg: DailyJobConfig, prev_dir: Path | None, tables: tuple[str, ...]) -> dict[str, TableIds]:
    ids = {}
    for table in tables:
        size = cfg.model.hash_size.get(table)
        ids[table] = TableIds(table, "grow" if size is None else "hash", size)
        if prev_dir is not None:
            ids[table].load(prev_dir / f"vocab.{table}.npy")
    return ids


def _observe_day(ids: dict[str, TableIds], features: Path, day: dt.date, clusters: UserClusters | None) -> None:
    """The day's target ids into the id spaces (users as their clusters under UC-Clustering; -1 = none)."""
    columns = {"item": "item_id", "user": "user_id"}
    for path in day_parts(str(features), day):
        table = pq.read_table(path, columns=list(columns.values()))
        for t, ti in ids.items():
            raw = table.column(columns[t]).to_numpy()
            if t == "user" and clusters is not None:
                raw = clusters(raw)
                raw = raw[raw >= 0]
            ti.observe(raw)


def _params(sm: ShardedModel, ids: dict[str, TableIds], dim: int) -> dict[str, int]:
    dense = sum(p.numel() for n, p in sm.model.named_parameters() if "sparse_arch" not in n)
    rows = sum(t.num_embeddings for t in ids.values())
    in_use = sum(t.stats().rows_in_use for t in ids.values())
    return {"dense": int(dense), "total": int(dense + rows * dim), "in_use": int(dense + in_use * dim)}


def run_day(cfg: DailyJobConfig, env: DistEnv, job: JobDir, schema: LogSchema, log_days: list[dt.date],
            day: dt.date) -> dict[str, Any]:  # fmt: skip
    t_day = time.perf_counter()
    day_index = log_days.index(day)
    prev = job.latest_before(day)
    prev_dir = job.day_dir(prev) if prev else None
    if env.is_main:
        logger.info("day %s: %s", day, f"warm start from {prev}" if prev else "from scratch")
    features, state_path, feat_stats = _featurize(cfg, env, job, schema, log_days, day,
                                                  prev_dir / "state.npz" if prev_dir else None)  # fmt: skip
    channel = cfg.history.channels[0]
    tables = TABLES_BY_FORMULATION[cfg.model.formulation]
    ids = _table_ids(cfg, prev_dir, tables)
    clusters = None
    if cfg.clustering is not None and "user" in tables:
        clusters = (UserClusters.load(prev_dir / "clusters.npz", cfg.clustering) if prev_dir
                    else UserClusters(cfg.clustering))  # fmt: skip
    _observe_day(ids, features, day, clusters)
    num_embeddings = {t: ids[t].num_embeddings for t in tables}

    torch.manual_seed(cfg.train.seed * 100_003 + day_index)
    model = build_ranking_model(cfg.model, num_embeddings, schema.labels, cfg.train.num_time_buckets)
    sm = shard_model(model, tables=num_embeddings, embedding_dim=cfg.model.embedding_dim,
                     sharding_type=cfg.sharding.sharding_type, optim=cfg.optim, env=env)  # fmt: skip
    sm.optimizer.init_state()
    state = DayState()
    mid = Checkpointer(job.work_dir(day) / "checkpoints", keep=2, rank=env.rank)
    latest = mid.latest()
    if latest is not None:
        restore(latest, sm, state)
        if env.is_main:
            logger.info("day %s: resumed mid-day at row %d (step %d)", day, state.rows, state.step)
    elif prev_dir is not None:
        app = checkpoint_state(sm, DayState())
        grown = load_grown(_committed_checkpoint(prev_dir), app)
        sm.model.load_state_dict(app["model"])
        sm.optimizer.load_state_dict(app["optim"])
        if env.is_main and grown:
            logger.info("day %s: tables grew %s", day, {k.rsplit(".", 2)[-2]: v for k, v in grown.items()
                                                          if k.startswith("model.")})  # fmt: skip

    reader = FeatureReader(features, day, schema, cfg.history.channels)
    N, B, W = reader.num_rows, cfg.train.global_batch_size, env.world_size
    local = math.ceil(B / W)
    meta = {"day": day.isoformat(), "num_embeddings": num_embeddings, "world_size": W, "config": to_dict(cfg)}
    count = torch.zeros(2, dtype=torch.float64)  # this rank's (rows, sum of positions) since the last save

    def save(ckpt: Checkpointer) -> None:
        totals = count.clone()
        if dist.is_initialized():
            dist.all_reduce(totals)
        state.trained_count += int(totals[0])
        state.trained_sum += int(totals[1])
        count.zero_()
        ckpt.save(state.step, checkpoint_state(sm, state), meta)

    steps_total = math.ceil(N / B)
    progress = Progress(
        steps_total, state.step, B, cfg.train.progress and env.is_main, f"{cfg.model.formulation} {day}"
    )
    t_train = time.perf_counter()
    rows_at_start = state.rows

    def build(lo: int, hi: int) -> RankingBatch:
        return make_log_batch(reader.read(lo, hi), formulation=cfg.model.formulation, ids=ids, labels=schema.labels,
                              channel=channel, num_time_buckets=cfg.train.num_time_buckets, pad_to=local,
                              user_map=clusters, locality=cfg.train.locality)  # fmt: skip

    with Prefetcher(day_batches(build, state.rows, N, B, env), cfg.train.prefetch_batches) as batches:
        for g, batch in batches:
            loss = train_step(sm, batch.to(env.device))
            real = batch.example_index[batch.example_index >= 0]
            count += torch.tensor([real.numel(), float(real.sum())], dtype=torch.float64)
            state.step += 1
            state.rows = min((g + 1) * B, N)
            progress.update(loss=float(loss))
            if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0 and state.rows < N:
                save(mid)
    progress.close()
    train_seconds = time.perf_counter() - t_train
    examples_per_s = (state.rows - rows_at_start) / train_seconds if train_seconds > 0 else 0.0

    partial = job.begin(day) if env.is_main else job.days_dir / f"{day.isoformat()}.partial"
    _barrier()
    save(Checkpointer(partial / "checkpoints", keep=1, rank=env.rank))
    exactly_once = state.trained_count == N and state.trained_sum == N * (N - 1) // 2

    evaluation = None
    next_days = log_days[day_index + 1 : day_index + 2]
    if next_days:
        evaluation = _evaluate_next_day(cfg, env, job, schema, log_days, next_days[0], state_path, sm, ids, clusters)
    clustering = None
    if clusters is not None and env.is_main:  # after the evaluation: day D's model saw the clusters of D-1
        users, items = _positives(features, day, channel)
        clustering = asdict(clusters.update(users, items))
        clusters.save(partial / "clusters.npz")

    metrics = {
        "day": day.isoformat(),
        "day_index": day_index,
        "formulation": cfg.model.formulation,
        "warm_start": prev.isoformat() if prev else None,
        "train": {
            "rows": N,
            "steps": state.step,
            "rows_trained": state.trained_count,
            "exactly_once": exactly_once,
            "examples_per_s": examples_per_s,
            "train_seconds": train_seconds,
        },
        "ids": {t: asdict(ids[t].stats()) for t in tables},
        "params": _params(sm, ids, cfg.model.embedding_dim),
        "eval": evaluation,
        "clustering": clustering,
        "featurize": feat_stats,
        "world_size": W,
        "wall_seconds": time.perf_counter() - t_day,
        "git_commit": git_commit(),
        "env": environment_info(),
    }
    if not exactly_once:
        raise RuntimeError(f"day {day}: trained {state.trained_count} rows (position sum {state.trained_sum}), "
                           f"not each of the {N} rows once")  # fmt: skip
    if env.is_main:
        shutil.copyfile(state_path, partial / "state.npz")
        for t, ti in ids.items():
            ti.save(partial / f"vocab.{t}.npy")
        job.commit(day, metrics)
        logger.info("day %s committed: %s", day, _summary(metrics))
    _barrier()
    return metrics


def _positives(features: Path, day: dt.date, channel: str) -> tuple[np.ndarray, np.ndarray]:
    users, items = [], []
    for path in day_parts(str(features), day):
        t = pq.read_table(path, columns=["user_id", "item_id", channel])
        pos = t.column(channel).to_numpy() == 1
        users.append(t.column("user_id").to_numpy()[pos])
        items.append(t.column("item_id").to_numpy()[pos])
    return np.concatenate(users), np.concatenate(items)


def day_batches(
    build: Callable[[int, int], RankingBatch], start: int, num_rows: int, global_batch: int, env: DistEnv
) -> Iterator[tuple[int, RankingBatch]]:
    """This rank's ``(g, batch)`` for every global batch of the day from position ``start`` (``build(lo, hi)``
    reads and assembles positions [lo, hi)); run ahead in a :class:`~framework.trainers.common.Prefetcher`."""
    for g, lo, hi in rank_slices(start, num_rows, global_batch, env.rank, env.world_size):
        yield g, build(lo, hi)


def _committed_checkpoint(day_dir: Path) -> Path:
    latest = Checkpointer(day_dir / "checkpoints").latest()
    if latest is None:
        raise FileNotFoundError(f"{day_dir}: committed day without a checkpoint")
    return latest


def _evaluate_next_day(cfg: DailyJobConfig, env: DistEnv, job: JobDir, schema: LogSchema, log_days: list[dt.date],
                       nxt: dt.date, state_path: Path, sm: ShardedModel, ids: dict[str, TableIds],
                       clusters: UserClusters | None) -> dict[str, Any]:  # fmt: skip
    """Day D's model on day D+1 (featurized from the state after D into work/D+1, reused by D+1's own run)."""
    features, _, _ = _featurize(cfg, env, job, schema, log_days, nxt, state_path)
    reader = FeatureReader(features, nxt, schema, cfg.history.channels)
    main = MAIN_TASK_DEFAULT if MAIN_TASK_DEFAULT in schema.labels else schema.positives[0]
    ts = reader.column("ts") if cfg.train.eval_windows > 1 else np.empty(0, np.int64)
    first = _evaluate(cfg, env, reader, 0, min(cfg.train.eval_examples, reader.num_rows), sm, ids, schema,
                      segments=len(cfg.history.segment_edges) + 1, clusters=clusters)  # fmt: skip
    windows = []
    if ts.size:
        edges = np.linspace(ts[0], ts[-1] + 1, cfg.train.eval_windows + 1)
        starts = np.searchsorted(ts, edges[:-1])
        for w, lo in enumerate(starts.tolist()):
            hi = min(lo + cfg.train.window_examples, int(np.searchsorted(ts, edges[w + 1])))
            res = _evaluate(cfg, env, reader, lo, hi, sm, ids, schema, segments=0, clusters=clusters)
            hours = (edges[w] - ts[0]) / 3600.0, (edges[w + 1] - ts[0]) / 3600.0
            windows.append({"hours": [round(hours[0], 2), round(hours[1], 2)], "rows": hi - lo,
                            "nce": res["tasks"][main]["nce"], "auc": res["tasks"][main]["auc"]})  # fmt: skip
    return {"day": nxt.isoformat(), "main_task": main, **first, "windows": windows}


@torch.no_grad()
def _evaluate(cfg: DailyJobConfig, env: DistEnv, reader: FeatureReader, lo: int, hi: int, sm: ShardedModel,
              ids: dict[str, TableIds], schema: LogSchema, segments: int,
              clusters: UserClusters | None) -> dict[str, Any]:  # fmt: skip
    """AUC/NCE per task on positions [lo, hi) (ranks split them; metrics are gathered), and per activeness segment
    (``segments[s]``: ``rows``, NCE per task under the task's name, ``auc`` per task)."""
    sm.model.eval()
    B = cfg.train.eval_batch_size * env.world_size
    local = cfg.train.eval_batch_size
    tasks = list(schema.labels)
    overall = RankingMetrics(tasks)
    by_segment = [RankingMetrics(tasks) for _ in range(segments)]
    n_batches = math.ceil((hi - lo) / B) if hi > lo else 0
    for g in range(n_batches):  # every rank runs every batch (padding when its slice is empty): collectives
        a, b = lo + g * B, min(lo + (g + 1) * B, hi)
        _, s0, s1 = next(rank_slices(0, b - a, b - a, env.rank, env.world_size))
        rows = reader.read(a + s0, a + s1)
        batch = make_log_batch(rows, formulation=cfg.model.formulation, ids=ids, labels=schema.labels,
                               channel=cfg.history.channels[0], num_time_buckets=cfg.train.num_time_buckets,
                               pad_to=local, user_map=clusters).to(env.device)  # fmt: skip
        logits = sm.model(batch.sparse, batch.time_buckets)
        overall.update(logits, batch.labels, batch.weights)
        seg = np.full(batch.batch_size, -1)
        seg[: len(rows)] = rows.columns["segment"]
        for s, m in enumerate(by_segment):
            m.update(logits, batch.labels, batch.weights * torch.from_numpy((seg == s).astype(np.float32)))
    res = overall.compute()
    out: dict[str, Any] = {
        "rows": int(res["num_examples"]),
        "tasks": {
            t: {"auc": res[f"{t}/auc"], "nce": res[f"{t}/nce"], "label_rate": res[f"{t}/label_rate"]} for t in tasks
        },  # fmt: skip
    }
    if segments:
        seg_res = [m.compute() for m in by_segment]
        out["segments"] = {str(s): {"rows": int(r["num_examples"]), **{t: r[f"{t}/nce"] for t in tasks},
                                    "auc": {t: r[f"{t}/auc"] for t in tasks}}
                           for s, r in enumerate(seg_res)}  # fmt: skip
    return out


def _summary(m: dict[str, Any]) -> str:
    ev = m["eval"]
    nce = f", NCE({ev['main_task']}) on {ev['day']}: {ev['tasks'][ev['main_task']]['nce']:.4f}" if ev else ""
    return f"{m['train']['rows']} rows, {m['params']['total']:,} params{nce}"
