"""CPU kernel benchmark: the PyTorch reference vs torch.compile of it (and eager padded PyTorch) at the ranking
model's shapes, the HVP modes per model, the solvers and the RankCLIP loss, so CPU users know what ``auto`` should
pick there. (Triton runs on CPU only under its interpreter, for parity tests: not a contender.)

    .venv/bin/python benchmarks/kernels/bench_cpu.py                       # writes benchmarks/results/kernels_cpu.json
    .venv/bin/python benchmarks/kernels/bench_cpu.py --out /tmp/k.json --reps 3

Timed on one intra-op thread (the ranking trainer's setting on this 2-core machine: 2 ranks, 1 thread each).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from suite import (  # noqa: E402
    bench_hvp,
    bench_output_layer,
    bench_pooling,
    bench_rankclip,
    bench_solvers,
    summary,
)

from framework.trainers.common import check_results_or_exit, result_header, write_result  # noqa: E402

POOLING = [  # configs/ranking/din_throughput.yaml: 1024 rows per rank, dim 64, 2 heads, lists <= 100
    {"B": 1024, "mean_len": 50, "max_len": 100, "D": 64, "H": 2, "dtype": torch.float32},
    {"B": 512, "mean_len": 128, "max_len": 1024, "D": 64, "H": 4, "dtype": torch.float32},
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "kernels_cpu.json"))
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    check_results_or_exit(p, args.out)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    result = result_header("kernels_cpu")
    result["threads"] = args.threads
    pooling = []
    for cfg in POOLING:
        r = bench_pooling(cfg, cpu, backends=["reference"], peers=True, compile_=True, copy_bw=None, reps=args.reps)
        pooling.append(r)
        t = r["seconds"]
        print(f"[kernels] pooling {cfg}: reference {t['fwd_reference'] * 1e3:.2f} ms, compiled reference "
              f"{t['fwd_compile_reference'] * 1e3:.2f} ms, eager padded {t['fwd_eager_padded'] * 1e3:.2f} ms, "
              f"compiled padded {t['fwd_compile_padded'] * 1e3:.2f} ms; fwd+bwd reference "
              f"{t['fwd_bwd_reference'] * 1e3:.2f} ms, compiled {t['fwd_bwd_compile_reference'] * 1e3:.2f} ms",
              flush=True)  # fmt: skip
    result["pooling"] = pooling
    result["hvp"] = bench_hvp(cpu, "cpu", K=64, reps=max(3, args.reps // 2))
    for model, r in result["hvp"]["models"].items():
        print(f"[kernels] hvp {model}: faster mode {r['faster_mode_batched']} (batched), {r['faster_mode_single']} "
              f"(single); batched/vector {r['batched_per_vector_over_fwd_bwd']:.2f}x fwd+bwd, "
              f"x{r['batched_speedup_vs_torch_func_loop']:.1f} vs torch.func loop", flush=True)  # fmt: skip
    result["output_layer_hvp"] = bench_output_layer(cpu, 512, 64, 100, 64, ["reference"], reps=args.reps)
    result["solvers"] = bench_solvers(cpu, 2048, 64, 50, reps=max(3, args.reps // 2))
    result["rankclip"] = bench_rankclip(cpu, 512, 128, ["reference"], compile_=True, reps=args.reps)
    print(f"[kernels] rankclip/clip loss at 512: {result['rankclip']['rankclip_over_clip']:.2f}", flush=True)
    result["summary"] = summary(result["device"], pooling, result["hvp"], result["rankclip"], roofline=False)
    write_result(args.out, result)
    print(f"[kernels] summary {result['summary']}\n[kernels] wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
