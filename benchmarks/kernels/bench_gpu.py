"""GPU kernel benchmarks: pooling, HVPs, solvers, RankCLIP loss; every kernel against its peers in the same run.

    bash benchmarks/kernels/run_device.sh                    # parity tests on the GPU, then this; see that script
    python benchmarks/kernels/bench_gpu.py --out /tmp/k.json
    python benchmarks/kernels/bench_gpu.py --smoke --device cpu --out /tmp/k.json   # tiny shapes, CI smoke test

Goals (issue 9), at B=4096, mean length 100-256, max 1024, D=64-192, bf16: pooling forward within 2x of the
memory roofline (fraction_of_copy_bw >= 0.5, the roofline being the device's copy bandwidth measured here),
>= 5x eager padded PyTorch, >= 1.5x torch.compile of it; fused backward <= 3x forward; HVP with 64 vectors
<= 2.2x one forward+backward per vector and >= 2x the torch.func loop; RankCLIP loss at batch 4096 <= 1.10x CLIP.
Writes a JSON with a top-level ``summary`` (the results interface) and every measurement behind it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
from suite import (  # noqa: E402
    bench_hvp,
    bench_output_layer,
    bench_pooling,
    bench_rankclip,
    bench_solvers,
    copy_bandwidth,
    summary,
)

from framework.trainers.common import check_results_or_exit, result_header, write_result  # noqa: E402

POOLING = [  # the first one is the headline of the summary; torch.compile peers (~1 min each) on the first two
    ({"B": 4096, "mean_len": 128, "max_len": 1024, "D": 128, "H": 4, "dtype": torch.bfloat16}, True),
    ({"B": 4096, "mean_len": 256, "max_len": 1024, "D": 192, "H": 4, "dtype": torch.bfloat16}, True),
    ({"B": 4096, "mean_len": 100, "max_len": 1024, "D": 64, "H": 2, "dtype": torch.bfloat16}, False),
    ({"B": 4096, "mean_len": 128, "max_len": 1024, "D": 128, "H": 4, "dtype": torch.float32}, False),
]
SMOKE_POOLING = [({"B": 6, "mean_len": 5, "max_len": 40, "D": 8, "H": 2, "dtype": torch.float32}, False)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "kernels_h200.json"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, no torch.compile (checks the script runs)")
    args = p.parse_args(argv)
    check_results_or_exit(p, args.out)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --smoke for a smoke test", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)"
    smoke, compile_ = args.smoke, not args.smoke
    backends = ["reference", "triton"]
    reps = 3 if smoke else 20
    result = result_header("kernels_gpu")
    # A device machine gets a copy of the tree without .git: run_device.sh passes the commit it was made from.
    result["git_commit"] = result["git_commit"] or os.environ.get("SCALEFIRST_COMMIT")
    result.update(device=name, triton=triton.__version__, smoke=smoke)
    bw = copy_bandwidth(device, (1 << 20) if smoke else (2 << 30))
    result["copy_bandwidth_GBps"] = bw / 1e9
    print(f"[kernels] {name}: copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)

    pooling = []
    for cfg, with_compile in SMOKE_POOLING if smoke else POOLING:
        r = bench_pooling(cfg, device, backends=backends, peers=True, compile_=with_compile, copy_bw=bw, reps=reps)
        pooling.append(r)
        print(f"[kernels] pooling {cfg}: fwd {r['seconds']['fwd_triton'] * 1e3:.3f} ms, "
              f"{r.get('fwd_fraction_of_copy_bw', 0):.2f} of copy bw, x{r['speedup_vs_eager_padded']:.1f} eager, "
              f"bwd/fwd {r['bwd_over_fwd']:.2f}", flush=True)  # fmt: skip
    result["pooling"] = pooling
    result["hvp"] = bench_hvp(device, "smoke" if smoke else "gpu", K=4 if smoke else 64, reps=reps)
    for model, r in result["hvp"]["models"].items():
        print(f"[kernels] hvp {model} ({r['params']} params): batched/vector {r['batched_per_vector_over_fwd_bwd']:.2f}"
              f"x fwd+bwd ({r['faster_mode_batched']}), x{r['batched_speedup_vs_torch_func_loop']:.1f} vs torch.func "
              "loop", flush=True)  # fmt: skip
    result["output_layer_hvp"] = (
        bench_output_layer(device, 8, 4, 5, 3, backends, reps=reps)
        if smoke
        else bench_output_layer(device, 4096, 512, 1000, 64, backends, reps=reps)
    )
    result["solvers"] = bench_solvers(device, 16 if smoke else 4096, 4 if smoke else 64, 5 if smoke else 100, reps=reps)
    result["rankclip"] = bench_rankclip(device, 16 if smoke else 4096, 8 if smoke else 512, backends, compile_,
                                        reps=reps)  # fmt: skip
    print(f"[kernels] rankclip/clip loss {result['rankclip']['rankclip_over_clip']:.2f}", flush=True)
    result["summary"] = summary(name, pooling, result["hvp"], result["rankclip"], roofline=device.type == "cuda")
    write_result(args.out, result)
    print(f"[kernels] summary {result['summary']}\n[kernels] wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
