"""HALC against greedy, beam search and VCD on the scene world's held-out scenes (issue 12).

    .venv/bin/scalefirst demo-lvlm --run-dir runs/demo_lvlm          # the models: 3 seeds of MLE and re-weighted
    .venv/bin/python benchmarks/halc_scenes.py --demo-dir runs/demo_lvlm
    .venv/bin/python benchmarks/halc_scenes.py --demo-dir D --limit 4 --seeds 1 --clip-steps 2 --out /tmp/h.json  # smoke

1. HALC's matcher: a CLIP (configs/clip/demo.yaml, InfoNCE, text context 160 bytes so that whole descriptions
   fit) trained on the scene world's training shards (images + detailed captions) on 2 ranks (or ``--matcher-run``,
   one trained before).
2. Every seed's MLE model (``demo-dir/mle/seed<k>``) decodes the first ``--limit`` held-out scenes and their POPE
   questions with greedy, beam (3 beams), VCD (alpha 1, beta 0.1) and HALC (thesis defaults, 1 beam, FOV passes
   batched, the detector queried with the phrase a word ends on the scene world's annotations, the CLIP above as
   the matcher); every seed's re-weighted model with greedy and HALC. Ablations on seed 0 (``ABLATIONS``): the FOV
   passes sequential, the detector queried with the word alone, object words only (the official code's noun
   filter), and beams kept by log-probability instead of the matcher.
3. Cost, one prompt at a time for every strategy (the thesis' setting: beam search and HALC decode one prompt at a
   time, so greedy and VCD do too; greedy batched 32 prompts per forward is reported beside): wall time of the
   descriptions and of POPE, tokens/s, the ratio to greedy on the same model, and HALC's parts (base forwards, FOV
   forwards, detector, matcher) against the thesis' cost model (eq. 6.5). One process, this CPU's threads.

Writes benchmarks/results/halc_scenes.json (``summary``: per strategy the means over the MLE seeds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from framework.data.lvlm.tokenizer import scene_tokenizer  # noqa: E402
from framework.decoding.halc import HALCConfig, clip_matcher  # noqa: E402
from framework.evaluation.lvlm_eval import evaluate_lvlm  # noqa: E402
from framework.trainers.clip import load_trained_clip  # noqa: E402
from framework.trainers.common import check_results_or_exit, result_header, write_result  # noqa: E402
from framework.trainers.lvlm import load_final_model  # noqa: E402
from launch.cli import CLIP_DEMO_CONFIG, run_torchrun  # noqa: E402

KEYS = ("chair_s", "chair_i", "recall", "pope_f1", "length")
MLE_DECODINGS = ("greedy", "beam", "vcd", "halc")
REWEIGHTED_DECODINGS = ("greedy", "halc")
SUMMARY_KEYS = ("chair_s", "chair_i", "recall", "pope_f1", "time_ratio_vs_greedy")
"""The results interface: ``summary[decoding]``'s keys (``summary_detail`` has length, POPE time and tokens/s too)."""
ABLATIONS = {
    "halc_sequential": ("halc", HALCConfig(batched=False), True),
    "halc_word": ("halc", HALCConfig(ground="word"), True),
    "halc_objects": ("halc", HALCConfig(kinds=("object",)), True),
    "halc_logprob": ("halc", HALCConfig(), False),
}
"""Seed 0's extra HALC runs: name -> (decoding, config, with the CLIP matcher)."""


def train_matcher(demo: Path, steps: int, nproc: int, batch: int) -> Path:
    run = demo / "clip_matcher"
    overrides = [
        "loss.kind=clip", f"data.train_shards={demo / 'scenes' / 'train'}", "data.val_shards=null",
        "model.context_length=160", f"train.run_dir={run}", f"train.max_steps={steps}", "train.resume=never",
        "train.checkpoint_every=null", f"train.batch_size={batch}",
    ]  # fmt: skip
    if run_torchrun(nproc, CLIP_DEMO_CONFIG, overrides) != 0:
        raise SystemExit("halc_scenes: training the CLIP matcher failed")
    return run


def decode_all(run: Path, scenes: Path, decodings: dict[str, tuple[str, HALCConfig, bool]], limit: int,
               matcher) -> dict[str, Any]:  # fmt: skip
    """Every named (decoding, HALC config, with the matcher) on ``run``'s merged model, one prompt at a time, and
    greedy batched."""
    model, cfg = load_final_model(run)
    tok = scene_tokenizer()
    kw = dict(image_size=cfg.model.image_size, image_tokens=cfg.model.image_tokens, limit=limit)
    evaluate_lvlm(model, tok, scenes, **{**kw, "limit": 2})  # warm-up: the first forwards are slower
    out: dict[str, Any] = {}
    for name, (decoding, halc_cfg, match) in {**decodings, "greedy_batched": ("greedy", HALCConfig(), True)}.items():
        res = evaluate_lvlm(model, tok, scenes, decoding=decoding, matcher=matcher if match else None,
                            halc_cfg=halc_cfg, batch_size=32 if name == "greedy_batched" else 1, **kw)  # fmt: skip
        tokens = sum(len(tok(e["caption"], add_special_tokens=False)["input_ids"]) + 1 for e in res["examples"])
        out[name] = {**{k: res[k] for k in KEYS}, "pope": res["pope"], "seconds": res["description_seconds"],
                     "pope_seconds": res["pope_seconds"], "tokens": tokens,
                     "tokens_per_s": tokens / res["description_seconds"], "halc_stats": res.get("halc_stats"),
                     "captions": [e["caption"] for e in res["examples"]], "examples": res["examples"][:5]}  # fmt: skip
        print(f"{run.parent.name}/{run.name} {name:>15}: " + " ".join(f"{k} {res[k]:.3f}" for k in KEYS)
              + f" | {res['description_seconds']:.1f} s + POPE {res['pope_seconds']:.1f} s", flush=True)  # fmt: skip
    for d in out.values():
        d["time_ratio_vs_greedy"] = d["seconds"] / out["greedy"]["seconds"]
        d["pope_time_ratio_vs_greedy"] = d["pope_seconds"] / out["greedy"]["pope_seconds"]
        d["time_ratio_vs_greedy_batched"] = d["seconds"] / out["greedy_batched"]["seconds"]
    return out


def cost_model(halc: dict[str, Any], greedy: dict[str, Any], fovs: int, batched: bool) -> dict[str, float]:
    """HALC's measured description cost against the thesis' eq. 6.5, per generated token. T = greedy's time per
    token (one prompt at a time), g = the grounded fraction of HALC's steps, T_fov = the FOV forwards' time per
    grounded step. The thesis assumes a FOV pass costs a cached decoding step (T_fov = T, or n T sequential) and
    negligible detector and matcher: 1 + g (batched) or 1 + g n (sequential)."""
    st = halc["halc_stats"]
    T = greedy["seconds"] / greedy["tokens"]
    g = st["grounded"] / st["steps"]
    t_fov = st["fov_seconds"] / max(st["grounded"], 1)
    parts = {k: st[f"{k}_seconds"] for k in ("base", "fov", "detector", "matcher")}
    return {
        "greedy_ms_per_token": 1e3 * T, "grounded_fraction": g, "fov_ms_per_grounded_step": 1e3 * t_fov,
        "fov_pass_over_greedy_token": t_fov / T, "matcher_calls_per_step": st["matcher_calls"] / st["steps"],
        "thesis_model_ratio": 1 + g * (1 if batched else fovs),
        "model_ratio_with_measured_parts": 1 + (g * t_fov + (parts["detector"] + parts["matcher"]) / st["steps"]) / T,
        "measured_ratio_per_token": halc["seconds"] / st["steps"] / T,
        "share_of_halc_time": {**{k: v / halc["seconds"] for k, v in parts.items()},
                               "other": 1 - sum(parts.values()) / halc["seconds"]},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", required=True, help="run dir of `scalefirst demo-lvlm` (models + scenes)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=60, help="held-out scenes decoded (and their POPE questions)")
    parser.add_argument("--clip-steps", type=int, default=300)
    parser.add_argument("--matcher-run", help="a trained scalefirst CLIP run to match with (default: train one in "
                        "<demo-dir>/clip_matcher)")  # fmt: skip
    parser.add_argument("--nproc", type=int, default=2, help="ranks of the CLIP matcher's training")
    parser.add_argument("--clip-batch", type=int, default=64, help="per-rank batch of the CLIP matcher's training")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "halc_scenes.json"))
    args = parser.parse_args(argv)
    check_results_or_exit(parser, args.out)
    demo = Path(args.demo_dir)
    scenes = demo / "scenes"
    missing = [
        p for p in [demo / "mle" / f"seed{s}" / "final" / "model.pt" for s in range(args.seeds)] if not p.is_file()
    ]
    if missing:
        parser.error(f"{missing[0]} not found: run `scalefirst demo-lvlm --run-dir {demo}` first")
    matcher_run = Path(args.matcher_run) if args.matcher_run else train_matcher(demo, args.clip_steps, args.nproc,
                                                                                 args.clip_batch)  # fmt: skip
    clip, clip_tok, clip_cfg = load_trained_clip(matcher_run)

    def matcher(samples):
        return clip_matcher(clip, clip_tok, {s["id"]: s["image"] for s in samples}, clip_cfg.model.image_size)

    def named(decodings: tuple[str, ...]) -> dict[str, tuple[str, HALCConfig, bool]]:
        return {d: (d, HALCConfig(), True) for d in decodings}

    runs: dict[str, dict[str, Any]] = {}
    for seed in range(args.seeds):
        runs[f"mle/seed{seed}"] = decode_all(demo / "mle" / f"seed{seed}", scenes,
                                             named(MLE_DECODINGS) | (ABLATIONS if seed == 0 else {}), args.limit,
                                             matcher)  # fmt: skip
        rw = demo / "reweighted" / f"seed{seed}"
        if (rw / "final" / "model.pt").is_file():
            runs[f"reweighted/seed{seed}"] = decode_all(rw, scenes, named(REWEIGHTED_DECODINGS), args.limit, matcher)

    cols = (*KEYS, "time_ratio_vs_greedy", "pope_time_ratio_vs_greedy", "time_ratio_vs_greedy_batched",
            "tokens_per_s")  # fmt: skip

    def mean(prefix: str, decoding: str) -> dict[str, float]:
        rows = [r[decoding] for name, r in runs.items() if name.startswith(prefix)]
        return {k: statistics.fmean(row[k] for row in rows) for k in cols}

    detail = {d: mean("mle/", d) for d in (*MLE_DECODINGS, "greedy_batched")}
    summary = {d: {k: detail[d][k] for k in SUMMARY_KEYS} for d in MLE_DECODINGS}
    reweighted = {
        d: mean("reweighted/", d) for d in REWEIGHTED_DECODINGS if any(n.startswith("reweighted/") for n in runs)
    }
    seed0 = runs["mle/seed0"]
    ablations = {name: {**{k: seed0[name][k] for k in cols},
                        "same_captions_as_halc": seed0[name]["captions"] == seed0["halc"]["captions"]}
                 for name in ABLATIONS}  # fmt: skip
    costs = {name: cost_model(seed0[name], seed0["greedy"], HALCConfig().fovs, batched=name == "halc")
             for name in ("halc", "halc_sequential")}  # fmt: skip
    result = {
        **result_header("halc_scenes"), "demo_dir": str(demo), "seeds": args.seeds, "limit": args.limit,
        "matcher_run": str(matcher_run), "clip_steps": None if args.matcher_run else args.clip_steps,
        "halc": asdict(HALCConfig()), "batching": "one prompt at a time, except greedy_batched (32 per forward)",
        "summary": summary, "summary_detail": detail, "reweighted_summary": reweighted,
        "ablations_seed0": ablations, "cost_model_seed0": costs, "runs": runs,
    }  # fmt: skip
    write_result(args.out, result)
    for d, row in {**detail, **ablations}.items():
        print(f"{d:>15}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
