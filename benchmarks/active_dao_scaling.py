"""DAO's candidate scoring against pool size and ranks W (issue 10): candidates/s on this CPU.

    .venv/bin/python benchmarks/active_dao_scaling.py
    .venv/bin/python benchmarks/active_dao_scaling.py --sizes 200,400 --all-sizes 50 --out /tmp/scaling.json  # smoke

One AL round on the rendered shapes pool (16 px, 5 classes): f (the loop's CNN) and the surrogate trained on 20
labels, then ``loop.sharded_dao_scores`` over the first N unlabeled candidates on W = 1 and W = 2 real gloo
processes (framework.distributed.spawn, one thread each: this machine has 2 cores). ``dao.params=head`` (the fused
output-layer path) over several N; ``dao.params=all`` (the whole CNN through torch.func HVPs) on a smaller N.
Times are the scoring only (the surrogate's training is reported apart: it does not shard) and the slowest rank's;
every W's scores are checked bit-equal to W=1's. Writes benchmarks/results/active_dao_scaling.json.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from framework.active.dao import DAOConfig  # noqa: E402
from framework.active.data import shapes_pool  # noqa: E402
from framework.active.loop import RoundContext, sharded_dao_scores, surrogate_probs  # noqa: E402
from framework.active.models import build_model  # noqa: E402
from framework.active.train import FitConfig, fit  # noqa: E402
from framework.distributed.spawn import run_multiprocess  # noqa: E402
from framework.trainers.common import check_results_or_exit, result_header, write_result  # noqa: E402

LABELS = 20


def _worker(sizes: list[int], params: str, num_pool: int) -> list[dict[str, Any]]:
    """On every rank: the same round, scored over each N; returns per N the rank's seconds and the scores' hash."""
    pool = shapes_pool(num_pool=num_pool, num_test=100)
    labeled = torch.arange(LABELS)
    fit_cfg = FitConfig()
    torch.manual_seed(0)
    model = build_model("cnn", tuple(tuple(x.shape[1:]) for x in pool.x), pool.num_classes)
    fit(model, tuple(x[labeled] for x in pool.x), pool.y[labeled], fit_cfg, seed=0)
    cfg = DAOConfig(params=params)  # type: ignore[arg-type]
    out = []
    for n in sizes:
        ctx = RoundContext(pool, labeled, torch.arange(LABELS, LABELS + n), model, seed=0, round=1)
        t0 = time.perf_counter()
        pi_U = surrogate_probs(ctx, fit_cfg, "mlp")
        t1 = time.perf_counter()
        dist.barrier()
        t2 = time.perf_counter()
        scores = sharded_dao_scores(ctx, cfg, pi_U)
        t3 = time.perf_counter()
        digest = hashlib.sha256(scores.numpy().tobytes()).hexdigest()
        out.append({"n": n, "surrogate_seconds": t1 - t0, "score_seconds": t3 - t2, "sha256": digest})
    return out


def measure(sizes: list[int], params: str, worlds: list[int], num_pool: int) -> list[dict[str, Any]]:
    rows = []
    per_world = {w: run_multiprocess(_worker, w, sizes, params, num_pool, timeout_s=3600) for w in worlds}
    for i, n in enumerate(sizes):
        row: dict[str, Any] = {"params": params, "candidates": n}
        for w, ranks in per_world.items():
            seconds = max(r[i]["score_seconds"] for r in ranks)
            row[f"w{w}"] = {"seconds": seconds, "candidates_per_s": n / seconds,
                            "surrogate_seconds": ranks[0][i]["surrogate_seconds"]}  # fmt: skip
            row[f"w{w}"]["same_scores_as_w1"] = all(r[i]["sha256"] == per_world[worlds[0]][0][i]["sha256"]
                                                    for r in ranks)  # fmt: skip
        for w in worlds[1:]:
            row[f"speedup_w{w}_vs_w{worlds[0]}"] = row[f"w{worlds[0]}"]["seconds"] / row[f"w{w}"]["seconds"]
        print(f"[dao-scaling] params={params} N={n}: " + ", ".join(
            f"W={w} {row[f'w{w}']['candidates_per_s']:.0f} cand/s" for w in worlds), flush=True)  # fmt: skip
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "active_dao_scaling.json"))
    p.add_argument("--sizes", default="1500,3000,6000,11980", help="candidates N with dao.params=head")
    p.add_argument("--all-sizes", default="256", help="candidates N with dao.params=all")
    p.add_argument("--worlds", default="1,2")
    args = p.parse_args(argv)
    check_results_or_exit(p, args.out)
    sizes = [int(s) for s in args.sizes.split(",")]
    all_sizes = [int(s) for s in args.all_sizes.split(",") if s]
    worlds = [int(w) for w in args.worlds.split(",")]
    num_pool = max(sizes + all_sizes) + LABELS
    result = result_header("active_dao_scaling")
    result.update({"pool": f"shapes, {num_pool} candidates at 16 px", "labels": LABELS, "worlds": worlds})
    t0 = time.perf_counter()
    result["rows"] = measure(sizes, "head", worlds, num_pool) + (measure(all_sizes, "all", worlds, num_pool)
                                                                 if all_sizes else [])  # fmt: skip
    result["seconds"] = time.perf_counter() - t0
    write_result(args.out, result)
    print(f"[dao-scaling] wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
