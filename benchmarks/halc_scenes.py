"""HALC against greedy, beam search and VCD on the scene world's held-out scenes (issue 12).

    .venv/bin/scalefirst demo-lvlm --run-dir runs/demo_lvlm          # the models: 3 seeds of MLE and re-weighted
    .venv/bin/python benchmarks/halc_scenes.py --demo-dir runs/demo_lvlm
    .venv/bin/python benchmarks/halc_scenes.py --demo-dir D --limit 4 --seeds 1 --clip-steps 2 --out /tmp/h.json  # smoke

1. HALC's matcher: a CLIP (configs/clip/demo.yaml, InfoNCE, text context 160 bytes so that whole descriptions
   fit) trained on the scene world's training shards (images + detailed captions) on 2 ranks.
2. Every seed's MLE model (``demo-dir/mle/seed<k>``) decodes the first ``--limit`` held-out scenes and their POPE
   questions with greedy, beam (3 beams), VCD (alpha 1, beta 0.1) and HALC (thesis defaults, 1 beam, FOV passes
   batched, the scene world's annotated boxes as the detector, the CLIP above as the matcher); every seed's
   re-weighted model with greedy and HALC.
3. Cost: the descriptions' decoding time and tokens/s per strategy, the ratio to greedy on the same model, and HALC
   with the FOV passes sequential instead of batched (seed 0). One process, this CPU's threads.

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


def decode_all(run: Path, scenes: Path, decodings: tuple[str, ...], limit: int, matcher, halc_cfg) -> dict[str, Any]:
    model, cfg = load_final_model(run)
    tok = scene_tokenizer()
    kw = dict(image_size=cfg.model.image_size, image_tokens=cfg.model.image_tokens)
    evaluate_lvlm(model, tok, scenes, limit=2, **kw)  # warm-up: the first forwards are slower, greedy runs first
    out: dict[str, Any] = {}
    for decoding in decodings:
        res = evaluate_lvlm(model, tok, scenes, limit=limit, decoding=decoding, matcher=matcher, halc_cfg=halc_cfg,
                            **kw)  # fmt: skip
        tokens = sum(len(tok(e["caption"], add_special_tokens=False)["input_ids"]) + 1 for e in res["examples"])
        out[decoding] = {**{k: res[k] for k in KEYS}, "pope": res["pope"], "seconds": res["description_seconds"],
                         "tokens_per_s": tokens / res["description_seconds"], "halc_stats": res.get("halc_stats"),
                         "examples": res["examples"][:5]}  # fmt: skip
        print(f"{run.parent.name}/{run.name} {decoding:>6}: " + " ".join(f"{k} {res[k]:.3f}" for k in KEYS)
              + f" | {res['description_seconds']:.1f} s", flush=True)  # fmt: skip
    for d in out.values():
        d["time_ratio_vs_greedy"] = d["seconds"] / out["greedy"]["seconds"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", required=True, help="run dir of `scalefirst demo-lvlm` (models + scenes)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=60, help="held-out scenes decoded (and their POPE questions)")
    parser.add_argument("--clip-steps", type=int, default=300)
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
    clip, clip_tok, clip_cfg = load_trained_clip(train_matcher(demo, args.clip_steps, args.nproc, args.clip_batch))

    def matcher(samples):
        return clip_matcher(clip, clip_tok, {s["id"]: s["image"] for s in samples}, clip_cfg.model.image_size)

    runs: dict[str, dict[str, Any]] = {}
    for seed in range(args.seeds):
        runs[f"mle/seed{seed}"] = decode_all(demo / "mle" / f"seed{seed}", scenes, MLE_DECODINGS, args.limit, matcher,
                                             HALCConfig())  # fmt: skip
        rw = demo / "reweighted" / f"seed{seed}"
        if (rw / "final" / "model.pt").is_file():
            runs[f"reweighted/seed{seed}"] = decode_all(rw, scenes, REWEIGHTED_DECODINGS, args.limit, matcher,
                                                        HALCConfig())  # fmt: skip
    sequential = decode_all(demo / "mle" / "seed0", scenes, ("greedy", "halc"), args.limit, matcher,
                            HALCConfig(batched=False))  # fmt: skip

    def mean(prefix: str, decoding: str, key: str) -> float:
        return statistics.fmean(r[decoding][key] for name, r in runs.items() if name.startswith(prefix))

    summary = {d: {k: mean("mle/", d, k) for k in (*KEYS[:4], "time_ratio_vs_greedy")} for d in MLE_DECODINGS}
    reweighted = {d: {k: mean("reweighted/", d, k) for k in (*KEYS[:4], "time_ratio_vs_greedy")}
                  for d in REWEIGHTED_DECODINGS if any(n.startswith("reweighted/") for n in runs)}  # fmt: skip
    result = {
        **result_header("halc_scenes"), "demo_dir": str(demo), "seeds": args.seeds, "limit": args.limit,
        "clip_steps": args.clip_steps, "halc": asdict(HALCConfig()),
        "summary": summary, "reweighted_summary": reweighted,
        "halc_sequential_fovs": {"time_ratio_vs_greedy": sequential["halc"]["time_ratio_vs_greedy"],
                                 "tokens_per_s": sequential["halc"]["tokens_per_s"],
                                 "same_outputs_as_batched": sequential["halc"]["examples"]
                                 == runs["mle/seed0"]["halc"]["examples"]},
        "runs": runs,
    }  # fmt: skip
    write_result(args.out, result)
    for d, row in summary.items():
        print(f"{d:>6}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
