"""``scalefirst`` console script.

scalefirst demo [--nproc 2]                      ICR vs UCR vs Hybrid on generated data, prints a table
scalefirst train --nproc 2 --config X [k=v ...]  torchrun on this machine (multi-node: use torchrun directly)
                                                 (config and data paths are checked first: ConfigError, exit 2)
scalefirst export --checkpoint DIR --out FILE    sharded checkpoint -> plain state dict for inference
scalefirst make-shards --images D --captions F --out D   image folder + captions -> WebDataset tar shards
scalefirst demo-clip [--nproc 2] [--steps N]     CLIP vs RankCLIP on offline images, prints the eval table
scalefirst eval clip --run-dir R [--pairs SHARDS] [--zeroshot DIR] [--probe DIR]   evaluate a finished clip run
scalefirst make-scenes --out D [--train N --eval N]   the annotated scene world for LVLMs (shards, POPE sets)
scalefirst eval lvlm --run-dir R --scenes D [--limit N] [--decoding greedy|beam|vcd|halc]   CHAIR / POPE
scalefirst demo-lvlm [--nproc 2] [--seeds 3]     LVLM: MLE vs visual-dependence re-weighting, CHAIR/POPE table
scalefirst gen-logs --days 60 --out DIR [--num-users N ...]   synthetic day-partitioned production logs (Parquet)
scalefirst daily --config configs/daily/ucr.yaml [--date D] [--catch-up] [--nproc 2]   recurring daily training
scalefirst report JOB_DIR [JOB_DIR ...] --out DIR   model size / relative NCE / segment / decay plots + summary.md
scalefirst convert-logs --root LOGS --out DIR --to webdataset [--day D ...]   Parquet days -> tar shards

Training commands print the progress bar, the project's own log lines and the result table; each rank's full log
(third-party INFO, known warnings) is appended to <run_dir>/log.txt. --verbose shows it all on the console too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "ranking" / "demo.yaml"
CLIP_DEMO_CONFIG = REPO / "configs" / "clip" / "demo.yaml"
LVLM_DEMO_PRETRAIN = REPO / "configs" / "lvlm" / "demo_pretrain.yaml"
LVLM_DEMO_CONFIG = REPO / "configs" / "lvlm" / "demo.yaml"
LVLM_COLUMNS = ("chair_s", "chair_i", "recall", "pope_f1", "length")
DEMO_CLIP_VARIANTS = (
    ("CLIP", "clip", ["loss.kind=clip"]),
    ("RankCLIP", "rankclip", ["loss.kind=rankclip"]),  # thesis: Plackett-Luce sums over ranked positions
    ("RankCLIP/pos", "rankclip_pos", ["loss.kind=rankclip", "loss.per_position=true"]),
)
"""(table row, run sub-directory, overrides): the models `scalefirst demo-clip` trains and compares."""
FORMULATIONS = ("icr", "ucr", "hybrid")
VERBOSE_HELP = "also third-party INFO logs and known warnings on the console (always in <run_dir>/log.txt)"


def torchrun_command(nproc: int, config: str | Path, overrides: list[str], verbose: bool = False) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "launch.train", "--config", str(config), *(["--verbose"] if verbose else []), *overrides,
    ]  # fmt: skip


def run_torchrun(nproc: int, config: str | Path, overrides: list[str], verbose: bool = False) -> int:
    if nproc < 1:
        raise SystemExit(f"--nproc must be >= 1, got {nproc}")
    env = dict(os.environ)
    # One intra-op thread per rank unless the user chose: ranks otherwise oversubscribe the cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(torchrun_command(nproc, config, overrides, verbose), env=env)


def format_table(rows: list[dict]) -> str:
    tasks = list(rows[0]["tasks"]) if rows else []
    header = ["formulation", *[f"{t} AUC" for t in tasks], *[f"{t} NCE" for t in tasks], "train ex/s"]
    lines = [" | ".join(f"{h:>12}" for h in header), "-" * (15 * len(header))]
    for r in rows:
        cells = [
            r["formulation"],
            *[f"{r['tasks'][t]['auc']:.4f}" for t in tasks],
            *[f"{r['tasks'][t]['nce']:.4f}" for t in tasks],
            f"{r['ex_per_s']:,.0f}",
        ]
        lines.append(" | ".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def summarize(metrics: dict) -> dict:
    test = metrics["test"]
    tasks = sorted({k.split("/")[0] for k in test if "/" in k}, key=lambda t: list(test).index(f"{t}/auc"))
    return {
        "formulation": metrics["formulation"],
        "tasks": {t: {"auc": test[f"{t}/auc"], "nce": test[f"{t}/nce"]} for t in tasks},
        "ex_per_s": metrics["train_examples_per_s"],
    }


def cmd_demo(args: argparse.Namespace) -> int:
    from launch.preflight import validate_job

    runs = {}
    for formulation in FORMULATIONS:
        run_dir = Path(args.run_dir) / formulation
        overrides = [
            f"model.formulation={formulation}",
            f"train.run_dir={run_dir}",
            "train.resume=never",
            *args.overrides,
        ]
        validate_job(args.config, overrides)  # all three before the first launch
        runs[formulation] = run_dir, overrides
    rows = []
    for formulation, (run_dir, overrides) in runs.items():
        print(f"\n=== {formulation}: {len(overrides)} overrides, {args.nproc} rank(s) ===", flush=True)
        rc = run_torchrun(args.nproc, args.config, overrides, args.verbose)
        if rc != 0:
            print(f"demo: {formulation} run failed with exit code {rc}", file=sys.stderr)
            return rc
        rows.append(summarize(json.loads((run_dir / "metrics.json").read_text())))
    print("\nICR vs UCR vs Hybrid (test split, gathered over ranks):")
    print(format_table(rows))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from launch.preflight import validate_job

    validate_job(args.config, args.overrides)
    return run_torchrun(args.nproc, args.config, args.overrides, args.verbose)


def cmd_export(args: argparse.Namespace) -> int:
    from framework.checkpoint.export import export_plain

    out = export_plain(args.checkpoint, args.out)
    print(f"wrote {out}")
    return 0


def cmd_make_shards(args: argparse.Namespace) -> int:
    from framework.data.clip.shards import write_shards

    shards = write_shards(args.images, args.captions, args.out, samples_per_shard=args.samples_per_shard)
    print(f"wrote {len(shards)} shard(s) to {args.out}")
    return 0


def evaluate_run(
    run_dir: str | Path,
    *,
    out: str | Path | None,
    name: str | None,
    pairs: str | None,
    zeroshot: str | None,
    probe: str | None,
    max_pairs: int,
) -> dict:
    """Evaluate the final model of a clip run (single process); writes eval.json (+ modality_gap.png)."""
    from framework.data.clip.loader import read_pairs
    from framework.evaluation import evaluate_clip
    from framework.trainers.clip import load_trained_clip

    model, tokenizer, cfg = load_trained_clip(run_dir)
    size = cfg.model.image_size
    pair_data = read_pairs(pairs, image_size=size, limit=max_pairs) if pairs else None
    return evaluate_clip(
        model,
        tokenizer,
        size,
        out_dir=out or Path(run_dir) / "eval",
        name=name or Path(run_dir).name,
        pairs=pair_data,
        zeroshot_root=zeroshot,
        probe_root=probe,
        seed=cfg.train.seed,
    )


def cmd_eval_clip(args: argparse.Namespace) -> int:
    from framework.evaluation import format_eval_table

    result = evaluate_run(
        args.run_dir, out=args.out, name=args.name, pairs=args.pairs, zeroshot=args.zeroshot, probe=args.probe,
        max_pairs=args.max_pairs,
    )  # fmt: skip
    print(format_eval_table([result]))
    return 0


def cmd_demo_clip(args: argparse.Namespace) -> int:
    """Offline images -> shards -> CLIP and RankCLIP (same seed, steps, batches) -> one evaluation table."""
    from framework.data.clip.offline_images import build_demo_dataset
    from framework.data.clip.shards import write_shards
    from framework.evaluation import format_eval_table
    from launch.preflight import validate_job

    root = Path(args.run_dir)
    data = root / "data"
    if not (data / "manifest.json").is_file():
        print(f"=== building the offline image-caption set in {data} ===", flush=True)
        build_demo_dataset(data, args.n_train, args.n_val, seed=0, zeroshot_per_class=40, overwrite=True)
    shards = {}
    for split in ("train", "val"):
        shards[split] = root / "shards" / split
        if not any(shards[split].glob("*.tar")):
            write_shards(data / split / "images", data / split / "captions.tsv", shards[split], samples_per_shard=250)
    runs = []
    for name, run, loss in DEMO_CLIP_VARIANTS:
        run_dir = root / run
        overrides = [
            *loss, f"train.run_dir={run_dir}", f"train.max_steps={args.steps}", "train.resume=never",
            f"data.train_shards={shards['train']}", f"data.val_shards={shards['val']}", *args.overrides,
        ]  # fmt: skip
        validate_job(args.config, overrides)
        runs.append((name, run_dir, overrides))
    rows = []
    for name, run_dir, overrides in runs:
        print(f"\n=== {name}: {args.steps} steps on {args.nproc} rank(s) ===", flush=True)
        rc = run_torchrun(args.nproc, args.config, overrides, args.verbose)
        if rc != 0:
            print(f"demo-clip: {name} run failed with exit code {rc}", file=sys.stderr)
            return rc
        rows.append(
            evaluate_run(
                run_dir, out=run_dir / "eval", name=name, pairs=str(shards["val"]), zeroshot=str(data / "zeroshot"),
                probe=str(data / "zeroshot"), max_pairs=args.n_val,
            )
        )  # fmt: skip
    print("\nCLIP vs RankCLIP (same data, seed, steps and batches; held-out val pairs and zero-shot folders;")
    print("one training seed of a tiny run: see README for what it does and does not show):")
    print(format_eval_table(rows))
    print(f"figures: {', '.join(str(r['plot']) for r in rows)}")
    return 0


def lvlm_row(name: str, res: dict) -> dict:
    return {"model": name, **{k: res[k] for k in LVLM_COLUMNS}}


def lvlm_table(rows: list[dict]) -> str:
    width = max(len(r["model"]) for r in rows)
    lines = [f"{'model':<{width}} | " + " | ".join(f"{c:>8}" for c in LVLM_COLUMNS), "-" * (width + 11 * 5 + 2)]
    for r in rows:
        cells = [f"{r[c]:8.3f}" if c != "length" else f"{r[c]:8.1f}" for c in LVLM_COLUMNS]
        lines.append(f"{r['model']:<{width}} | " + " | ".join(cells))
    return "\n".join(lines)


def cmd_eval_lvlm(args: argparse.Namespace) -> int:
    from framework.trainers.lvlm import evaluate_run, load_final_model

    model, cfg = load_final_model(args.run_dir)
    matcher = None
    if args.matcher_run:
        from framework.decoding.halc import clip_matcher
        from framework.trainers.clip import load_trained_clip

        clip, clip_tok, clip_cfg = load_trained_clip(args.matcher_run)

        def matcher(samples):
            images = {s["id"]: s["image"] for s in samples}
            return clip_matcher(clip, clip_tok, images, clip_cfg.model.image_size)

    halc_cfg = None
    if args.halc:
        from framework.config.loader import ConfigError, apply_overrides, from_dict
        from framework.decoding.halc import HALCConfig

        data: dict = {}
        origin: dict[str, str] = {}
        try:
            apply_overrides(data, origin, args.halc)
            halc_cfg = from_dict(HALCConfig, data, origin)
        except ConfigError as e:
            raise SystemExit(f"scalefirst eval lvlm --halc: {e}") from None
    res = evaluate_run(model, cfg, args.scenes, args.out or args.run_dir, limit=args.limit, decoding=args.decoding,
                       matcher=matcher, halc_cfg=halc_cfg)  # fmt: skip
    print(lvlm_table([lvlm_row(f"{Path(args.run_dir).name} ({args.decoding})", res)]))
    suffix = "" if args.decoding == "greedy" else f"_{args.decoding}"
    print(f"wrote {Path(args.out or args.run_dir) / f'eval{suffix}.json'} and examples{suffix}.png")
    return 0


def cmd_demo_lvlm(args: argparse.Namespace) -> int:
    """Scene world -> one pretrain stage -> per seed an MLE and a re-weighted instruct stage -> CHAIR/POPE table."""
    import time

    from framework.data.lvlm.scenes import build_scene_world
    from framework.io import write_json_atomic
    from framework.trainers.common import DirtyTreeError, check_results_path, result_header
    from launch.preflight import validate_job

    if args.out:
        try:
            check_results_path(args.out)
        except DirtyTreeError as e:
            print(f"demo-lvlm: {e}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    root = Path(args.run_dir)
    scenes = root / "scenes"
    if not (scenes / "manifest.json").is_file():
        print(f"=== scene world: {args.train:,} train / {args.eval:,} eval scenes in {scenes} ===", flush=True)
        build_scene_world(scenes, args.train, args.eval, seed=0)
    common = [f"data.scenes={scenes}", "train.resume=never", *args.overrides]
    pre_dir = root / "pretrain"
    jobs = [("pretrain", LVLM_DEMO_PRETRAIN, [f"train.run_dir={pre_dir}", f"train.max_steps={args.pretrain_steps}",
                                              *common])]  # fmt: skip
    for seed in range(args.seeds):
        for kind in ("mle", "reweighted"):
            jobs.append((f"{kind}/seed{seed}", LVLM_DEMO_CONFIG, [
                f"loss.kind={kind}", f"train.seed={seed}", f"train.init_from={pre_dir}",
                f"train.run_dir={root / kind / f'seed{seed}'}", f"train.max_steps={args.steps}", *common]))  # fmt: skip
    for _, config, overrides in jobs:
        validate_job(config, overrides)
    for name, config, overrides in jobs:
        print(f"\n=== {name} on {args.nproc} rank(s) ===", flush=True)
        rc = run_torchrun(args.nproc, config, overrides, args.verbose)
        if rc != 0:
            print(f"demo-lvlm: {name} failed with exit code {rc}", file=sys.stderr)
            return rc
    runs = {name: json.loads((root / name / "metrics.json").read_text()) for name, _, _ in jobs}
    summary = {kind: {k: sum(runs[f"{kind}/seed{s}"]["eval"][k] for s in range(args.seeds)) / args.seeds
                      for k in LVLM_COLUMNS} for kind in ("mle", "reweighted")}  # fmt: skip
    ratios = [m["step_seconds"]["reweighted"] / m["step_seconds"]["mle"] for name, m in runs.items()
              if name.startswith("reweighted/")]  # fmt: skip
    result = {
        **result_header("lvlm_demo"), "nproc": args.nproc, "seconds": time.perf_counter() - t0, "seeds": args.seeds,
        "pretrain_steps": args.pretrain_steps, "instruct_steps": args.steps, "summary": summary,
        "reweight_step_time_ratio": sum(ratios) / len(ratios),
        "pretrain": {k: runs["pretrain"]["eval"][k] for k in LVLM_COLUMNS},
        "per_seed": {name: {**{k: m["eval"][k] for k in LVLM_COLUMNS}, "pope": m["eval"]["pope"],
                            "final": m["final"], "step_seconds": m["step_seconds"]}
                     for name, m in runs.items() if name != "pretrain"},
        "scene_world": json.loads((scenes / "manifest.json").read_text())["stats"],
    }  # fmt: skip
    write_json_atomic(root / "lvlm_demo.json", result)
    if args.out:
        write_json_atomic(args.out, result)
    rows = [lvlm_row("pretrain only", result["pretrain"])]
    rows += [lvlm_row(f"{k} (mean of {args.seeds} seeds)", summary[k]) for k in ("mle", "reweighted")]
    print(f"\nLVLM on the scene world: held-out scenes, greedy decoding ({result['seconds']:.0f} s in all;")
    print(f"re-weighted steps take {result['reweight_step_time_ratio']:.2f}x an MLE step):")
    print(lvlm_table(rows))
    print(f"per-run eval.json and examples.png under {root}; summary in {root / 'lvlm_demo.json'}")
    return 0


def cmd_gen_logs(args: argparse.Namespace) -> int:
    """Write ``--days`` days of the synthetic production world (framework/data/logs/generator.py)."""
    import dataclasses
    import datetime as dt
    import time

    from framework.data.logs.generator import WorldConfig, generate_logs

    knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(WorldConfig)}
    knobs["start_day"] = dt.date.fromisoformat(knobs["start_day"])
    cfg = WorldConfig(**knobs)
    t0 = time.perf_counter()
    days = generate_logs(args.out, args.days, cfg, progress=True)
    seconds = time.perf_counter() - t0
    print(f"gen-logs: {len(days)} days ({days[0]} .. {days[-1]}) under {args.out}, "
          f"{cfg.events_per_day:,} events/day, {seconds:.1f} s")  # fmt: skip
    return 0


def cmd_make_scenes(args: argparse.Namespace) -> int:
    """Write the annotated scene world (framework/data/lvlm/scenes.py): shards, eval annotations, POPE sets."""
    from framework.data.lvlm.scenes import SceneWorldConfig, build_scene_world

    cfg = SceneWorldConfig(image_size=args.image_size, pair_prob=args.pair_prob)
    m = build_scene_world(args.out, args.train, args.eval, args.seed, cfg, samples_per_shard=args.samples_per_shard)
    st = m["stats"]
    print(f"make-scenes: {args.train:,} train / {args.eval:,} eval scenes under {args.out}; partner rate "
          f"{st['train']['partner_rate']:.2f} train vs {st['eval']['partner_rate']:.2f} eval, "
          f"{st['train']['faint']} faint and {st['train']['caption_only']} caption-only train objects")  # fmt: skip
    return 0


def cmd_daily(args: argparse.Namespace) -> int:
    """Lock the job, make sure the logs exist (generating the configured synthetic days if the root is empty),
    then train the planned days under torchrun (framework/jobs/daily.py)."""
    import datetime as dt

    from framework.config import ConfigError
    from framework.data.logs.generator import WorldConfig, generate_logs
    from framework.data.logs.schema import list_days
    from framework.jobs.layout import DayPlanError, JobDir, plan_days
    from framework.jobs.lock import JobLock, JobLocked
    from launch.preflight import validate_job

    overrides = list(args.overrides)
    if args.date:
        overrides.append(f"job.date={args.date}")
    if args.catch_up:
        overrides.append("job.catch_up=true")
    cfg = validate_job(args.config, overrides)
    if cfg.family != "daily":
        raise ConfigError(f"{args.config}: family is {cfg.family!r}; scalefirst daily runs family daily")
    try:
        lock = JobLock(cfg.train.run_dir).acquire()
    except JobLocked as e:
        print(f"daily: {e}", file=sys.stderr)
        return 3
    try:
        if not list_days(cfg.logs.root):
            gen = cfg.logs.generate
            if gen.days == 0:
                raise ConfigError(
                    f"logs.root: no day=YYYY-MM-DD directory under {cfg.logs.root} (and logs.generate.days=0)"
                )
            print(f"daily: {cfg.logs.root} holds no log day: generating {gen.days} synthetic days there "
                  f"({gen.events_per_day:,} events/day, seed {gen.seed})", flush=True)  # fmt: skip
            world = WorldConfig(num_users=gen.num_users, events_per_day=gen.events_per_day,
                                new_items_per_day=gen.new_items_per_day, start_day=dt.date.fromisoformat(gen.start_day),
                                seed=gen.seed)  # fmt: skip
            generate_logs(cfg.logs.root, gen.days, world, progress=True)
        job = JobDir(cfg.train.run_dir)
        try:
            days = plan_days(job, list_days(cfg.logs.root), cfg.job.date, cfg.job.catch_up)
        except (DayPlanError, ValueError) as e:
            print(f"daily: {e}", file=sys.stderr)
            return 2
        todo = [d for d in days if not job.is_committed(d)]
        for d in days:
            if d not in todo:
                print(f"daily: day {d} is already committed ({job.day_dir(d)}): nothing to do")
        if not todo:
            return 0
        print(f"daily: training {len(todo)} day(s), {todo[0]} .. {todo[-1]}, on {args.nproc} rank(s)", flush=True)
        return run_torchrun(args.nproc, args.config, overrides, args.verbose)
    finally:
        lock.release()


def cmd_convert_logs(args: argparse.Namespace) -> int:
    import datetime as dt

    from framework.data.logs.convert import to_webdataset

    days = [dt.date.fromisoformat(d) for d in args.day] if args.day else None
    done = to_webdataset(args.root, args.out, days)
    print(f"convert-logs: {len(done)} day(s) -> {args.out} (webdataset tar shards, one sample per row group)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from framework.jobs.report import write_report

    write_report(args.jobs, args.out)
    print((Path(args.out) / "summary.md").read_text())
    print(f"figures: {', '.join(str(p) for p in sorted(Path(args.out).glob('*.png')))}")
    return 0


def add_world_knobs(p: argparse.ArgumentParser) -> None:
    """One ``--knob`` per field of WorldConfig, defaults and help from it (kept in one place)."""
    import dataclasses

    from framework.data.logs.generator import WorldConfig

    for f in dataclasses.fields(WorldConfig):
        default = f.default
        kind = str if f.name == "start_day" else type(default)
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=str(default)
                       if f.name == "start_day" else default, help=f"default {default}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scalefirst", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="ICR vs UCR vs Hybrid on generated data")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--config", default=str(DEMO_CONFIG))
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("train", help="train on this machine through torchrun")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--config", required=True)
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("al", help="active learning: every strategy x seed of a family: active config")
    p.add_argument("--nproc", type=int, default=1, help="ranks (torchrun): DAO's candidate scoring is split")
    p.add_argument("--config", required=True)
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("export", help="checkpoint -> plain state dict")
    p.add_argument("--checkpoint", required=True, help="a committed checkpoint dir (run_dir/checkpoints/step_*)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("make-shards", help="image folder + captions CSV/TSV -> img2dataset-layout tar shards")
    p.add_argument("--images", required=True, help="folder the captions file's image paths are relative to")
    p.add_argument("--captions", required=True, help="CSV/TSV with header: image (or filename/file), caption")
    p.add_argument("--out", required=True)
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.set_defaults(fn=cmd_make_shards)

    p = sub.add_parser("demo-clip", help="CLIP vs RankCLIP on offline images (CPU), prints the eval table")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--config", default=str(CLIP_DEMO_CONFIG))
    p.add_argument("--run-dir", default="runs/demo_clip")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_demo_clip)

    p = sub.add_parser("eval", help="evaluate a finished run")
    family = p.add_subparsers(dest="family", required=True)
    q = family.add_parser("clip", help="zero-shot, linear probe, retrieval, alignment/uniformity, modality gap")
    q.add_argument("--run-dir", required=True, help="run_dir of a finished clip run (config.yaml, final/model.pt)")
    q.add_argument("--pairs", help="held-out image-caption shards (dir, brace pattern or list file)")
    q.add_argument("--zeroshot", help="labeled image folder(s): root/<class>/ or root/<family>/<class>/")
    q.add_argument("--probe", help="labeled image folder(s) for the linear probe (may equal --zeroshot)")
    q.add_argument("--max-pairs", type=int, default=5000, help="first N pairs of --pairs")
    q.add_argument("--out", help="output folder (default: <run-dir>/eval)")
    q.add_argument("--name", help="row name in the table (default: run dir name)")
    q.set_defaults(fn=cmd_eval_clip)

    q = family.add_parser("lvlm", help="CHAIR_S/CHAIR_I/recall, POPE per mode, response length, example figure")
    q.add_argument("--run-dir", required=True, help="run_dir of a finished lvlm run (config.yaml, final/model.pt)")
    q.add_argument("--scenes", required=True, help="scene-world directory (scalefirst make-scenes)")
    q.add_argument("--limit", type=int, help="first N held-out scenes (default: the run's data.eval_limit)")
    q.add_argument("--out", help="output folder for eval.json and examples.png (default: <run-dir>)")
    q.add_argument("--decoding", choices=["greedy", "beam", "vcd", "halc"], default="greedy",
                   help="decoding strategy (framework/decoding): greedy, beam search (3 beams), VCD (alpha 1, "
                        "beta 0.1), HALC (thesis defaults; the scene world's annotated boxes as its detector)")  # fmt: skip
    q.add_argument("--matcher-run", help="HALC: run_dir of a finished clip run whose CLIP scores the beams "
                                         "(default: beams kept by log-probability)")  # fmt: skip
    q.add_argument("--halc", nargs="+", metavar="KEY=VALUE", help="HALC: HALCConfig fields (framework/decoding/"
                   "halc.py), e.g. fovs=4 alpha=0.05 ground=word 'kinds=[object]'")  # fmt: skip
    q.set_defaults(fn=cmd_eval_lvlm)

    p = sub.add_parser("demo-lvlm", help="LVLM: MLE vs visual-dependence re-weighting on the scene world (CPU)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--run-dir", default="runs/demo_lvlm")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pretrain-steps", type=int, default=1200)
    p.add_argument("--steps", type=int, default=100, help="instruct steps of each MLE / re-weighted run")
    p.add_argument("--train", type=int, default=8000, help="training scenes")
    p.add_argument("--eval", type=int, default=200, help="held-out scenes")
    p.add_argument("--out", help="also write the summary JSON here (benchmarks/results/lvlm_demo.json)")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    p.set_defaults(fn=cmd_demo_lvlm)

    p = sub.add_parser("daily", help="recurring daily training on day-partitioned logs")
    p.add_argument("--config", required=True, help="a family: daily YAML (configs/daily/)")
    p.add_argument("--date", help="the day to train, YYYY-MM-DD (default: the latest log day)")
    p.add_argument("--catch-up", action="store_true", help="also train every earlier uncommitted day, in order")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_daily)

    p = sub.add_parser("convert-logs", help="copy Parquet log days into WebDataset tar shards")
    p.add_argument("--root", required=True, help="Parquet log root")
    p.add_argument("--out", required=True)
    p.add_argument("--to", choices=["webdataset"], default="webdataset")
    p.add_argument("--day", action="append", help="YYYY-MM-DD (repeat; default: every day)")
    p.set_defaults(fn=cmd_convert_logs)

    p = sub.add_parser("report", help="figures and a summary table from daily jobs' history.jsonl")
    p.add_argument("jobs", nargs="+", help="daily job directories (train.run_dir), e.g. runs/daily/icr runs/daily/ucr")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("make-scenes", help="the annotated scene world for LVLMs: shards, annotations, POPE sets")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=20_000)
    p.add_argument("--eval", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--pair-prob", type=float, default=0.9, help="P(partner | paired object) in train scenes")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.set_defaults(fn=cmd_make_scenes)

    p = sub.add_parser("gen-logs", help="synthetic production logs: day=YYYY-MM-DD/part-*.parquet")
    p.add_argument("--days", type=int, required=True)
    p.add_argument("--out", required=True, help="log root (existing complete days are kept)")
    add_world_knobs(p)
    p.set_defaults(fn=cmd_gen_logs)

    args = parser.parse_args(argv)
    # Imported after argparse (they import torch), so that --help stays instant.
    from framework.config import ConfigError
    from launch.preflight import one_line

    try:
        return int(args.fn(args))
    except ConfigError as e:
        print(f"ConfigError: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
