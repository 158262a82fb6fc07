"""Active learning benchmarks (issue 10): the digits low-budget protocol, a larger pool, the multimodal pool.

    .venv/bin/python benchmarks/active_learning.py                         # everything (see --protocols)
    .venv/bin/python benchmarks/active_learning.py --protocols digits --seeds 2 --rounds 3 --out /tmp/al.json

- digits: scikit-learn's real digits, 10 initial labels, 10 per round, 8 rounds, 5 seeds, every baseline and DAO
  (soft-rank, top-k, soft-max);
- shapes: 12k rendered shapes (10 labels per round is < 0.1% of the pool), fewer strategies and seeds;
- digits_all: the digits protocol with DAO moving all of the CNN's parameters (the thesis' setting; 3 seeds, with
  random and entropy on the same seeds for the paired differences);
- multimodal: digits + a weak generated modality, late fusion: BMMAL vs BADGE vs random vs entropy, per-modality
  accuracy; then the cold start: the same seeds started from MMCSAL's 10 labels (and from its ablation, the
  sample nearest each k-means centroid of the stage-1 representation) instead of 10 random ones, continued by
  random and BMMAL acquisition.
DAO runs with ``dao.params`` (default here: head, the fused output-layer path; ``--dao-params all`` for the whole
CNN, ~40x slower on this CPU) except in digits_all. Writes benchmarks/results/active_learning.json (``summary``:
the results interface) and figures in benchmarks/results/active_learning/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from framework.active.loop import run, summarize  # noqa: E402
from framework.active.report import accuracy_matrix, paired_difference, plot_curves, plot_heatmap  # noqa: E402
from framework.config import load_job_config  # noqa: E402
from framework.trainers.common import check_results_or_exit, result_header, write_result  # noqa: E402

DIGITS = ["random", "least_confidence", "margin", "entropy", "bald", "coreset", "badge", "dao", "dao_topk",
          "dao_softmax"]  # fmt: skip
SHAPES = ["random", "entropy", "coreset", "badge", "dao"]
MULTIMODAL = ["random", "entropy", "badge", "bmmal"]
COLD_STARTS = {"mmcsal": [], "mmcsal_kmeans": ["mmcsal.selector=kmeans"]}


def _protocol(config: str, overrides: list[str], run_dir: Path) -> tuple[dict, float]:
    cfg = load_job_config(REPO / "configs" / "active" / config, [*overrides, f"loop.run_dir={run_dir}"])
    t0 = time.perf_counter()
    results = run(cfg)
    return results, time.perf_counter() - t0


def _compact(results: dict[str, dict[int, dict]]) -> dict[str, Any]:
    """Per strategy: summary plus per-seed accuracy curves (selections stay in the run dirs)."""
    out = summarize(results)
    for s, by_seed in results.items():
        out[s]["accuracy_per_seed"] = {str(k): [r["accuracy"] for r in v["rounds"]] for k, v in by_seed.items()}
        modalities = next(iter(by_seed.values()))["rounds"][0].get("per_modality")
        if modalities:
            out[s]["per_modality_mean"] = {m: accuracy_matrix(by_seed, m).mean(0).tolist() for m in modalities}
    return out


def _coverage(labels: list[int], y) -> int:
    return len(set(y[labels].tolist()))


def _cold_starts(config: str, common: list[str], tmp: Path, base: dict, fig_dir: Path) -> dict[str, Any]:
    """MMCSAL's (and its k-means ablation's) initial labels vs random ones on the multimodal pool, same seeds."""
    from framework.active.data import digits_multimodal_pool

    y = digits_multimodal_pool().y
    initial = [st["labeled"][: st["rounds"][0]["labels"]] for st in base["random"].values()]
    out: dict[str, Any] = {"random": {"classes_covered_mean": sum(_coverage(i, y) for i in initial) / len(initial)}}
    curves = {"random_init+random": base["random"], "random_init+bmmal": base["bmmal"]}
    for name, extra in COLD_STARTS.items():
        run_dir = tmp / f"multimodal_{name}"
        results, seconds = _protocol(config, [*common, *extra, "loop.initial_strategy=mmcsal",
                                              "loop.strategies=[random,bmmal]"], run_dir)  # fmt: skip
        records = [json.loads(f.read_text()) for f in sorted((run_dir / "cold_start").glob("seed*.json"))]
        out[name] = {
            "seconds": seconds,
            "cold_start_seconds_mean": sum(r["seconds"] for r in records) / len(records),
            "classes_covered_mean": sum(_coverage(r["labeled"], y) for r in records) / len(records),
            "diagnostics_mean": {k: sum(r["diagnostics"][k] for r in records) / len(records)
                                 for k in records[0]["diagnostics"]},
            "strategies": _compact(results),
            "random_minus_random_init": paired_difference(results["random"], base["random"]),
            "bmmal_minus_random_init_bmmal": paired_difference(results["bmmal"], base["bmmal"]),
        }  # fmt: skip
        curves.update({f"{name}_init+{s}": v for s, v in results.items()})
    plot_curves(curves, fig_dir / "multimodal_cold_start.png", "multimodal: cold start (initial labels) x acquisition")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "active_learning.json"))
    p.add_argument("--protocols", default="digits,shapes,multimodal")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--dao-params", default="head", choices=["head", "all"])
    args = p.parse_args(argv)
    check_results_or_exit(p, args.out)
    torch.set_num_threads(1)
    out_path = Path(args.out)
    fig_dir = out_path.with_suffix("")
    seeds = f"loop.seeds=[{','.join(str(s) for s in range(args.seeds))}]"
    common = [seeds, f"loop.rounds={args.rounds}", f"dao.params={args.dao_params}"]
    result = result_header("active_learning")
    result["protocols"] = {}
    protocols = args.protocols.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        specs = {
            "digits": ("digits.yaml", [f"loop.strategies=[{','.join(DIGITS)}]"]),
            "shapes": ("digits.yaml", ["data.pool=shapes", f"loop.strategies=[{','.join(SHAPES)}]",
                                       f"loop.seeds=[{','.join(str(s) for s in range(min(3, args.seeds)))}]"]),
            "multimodal": ("multimodal.yaml", [f"loop.strategies=[{','.join(MULTIMODAL)}]"]),
            "digits_all": ("digits.yaml", ["loop.strategies=[random,dao,entropy]", "dao.params=all",
                                           f"loop.seeds=[{','.join(str(s) for s in range(min(3, args.seeds)))}]"]),
        }  # fmt: skip
        for name in protocols:
            config, extra = specs[name]
            print(f"[al] {name} ...", flush=True)
            results, seconds = _protocol(config, [*common, *extra], Path(tmp) / name)
            entry: dict[str, Any] = {"seconds": seconds, "strategies": _compact(results)}
            if "random" in results:
                for other in ("dao", "entropy", "badge", "bmmal"):
                    if other in results and other != "random":
                        entry[f"{other}_minus_random"] = paired_difference(results[other], results["random"])
            if "dao" in results and "entropy" in results:
                entry["dao_minus_entropy"] = paired_difference(results["dao"], results["entropy"])
            result["protocols"][name] = entry
            plot_curves(results, fig_dir / f"{name}_accuracy.png", f"{name}: test accuracy (mean ± std over seeds)")
            plot_heatmap(results, fig_dir / f"{name}_vs_random.png", f"{name}: accuracy − random, seeds × rounds")
            if name == "multimodal":
                for m in ("m1", "m2"):
                    plot_curves(results, fig_dir / f"{name}_{m}_accuracy.png", f"{name}: {m} head", per_modality=m)
                entry["cold_start"] = _cold_starts(config, common, Path(tmp), results, fig_dir)
            print(f"[al] {name} done in {seconds:.0f} s", flush=True)
    d = result["protocols"].get("digits")
    if d:
        s = d["strategies"]
        result["summary"] = {
            "labels": s["random"]["labels"],
            "accuracy_mean": {k: v["accuracy_mean"] for k, v in s.items()},
            "dao_minus_random": d["dao_minus_random"]["mean"],
            "dao_minus_entropy": d["dao_minus_entropy"]["mean"],
            "p_value_dao_vs_random": d["dao_minus_random"]["p_value"],
        }
    write_result(out_path, result)
    print(f"[al] wrote {out_path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
