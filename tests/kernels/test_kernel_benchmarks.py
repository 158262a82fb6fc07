"""The GPU benchmark script runs end to end (tiny shapes, CPU, Triton interpreter) and writes the results
interface, so the one prepared device session cannot die on a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {
    "device", "pooling_fwd_speedup_vs_eager", "pooling_fwd_speedup_vs_compile", "pooling_fwd_fraction_of_roofline",
    "pooling_bwd_over_fwd", "hvp_batched_over_fwd_bwd", "hvp_speedup_vs_torch_func", "rankclip_loss_over_clip",
}  # fmt: skip


def test_bench_gpu_smoke_writes_summary(tmp_path: Path) -> None:
    out = tmp_path / "kernels.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "benchmarks/kernels/bench_gpu.py", "--smoke", "--device", "cpu", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["summary"]) == SUMMARY_KEYS
    s = result["summary"]
    assert s["device"] == "cpu (Triton interpreter)"
    assert s["pooling_fwd_fraction_of_roofline"] is None  # only measured on a GPU
    for key in SUMMARY_KEYS - {"device", "pooling_fwd_fraction_of_roofline", "pooling_fwd_speedup_vs_compile"}:
        assert isinstance(s[key], float) and s[key] > 0, key
    # Every pooling peer was timed, and both HVP modes per model.
    assert {"fwd_triton", "fwd_reference", "fwd_eager_padded", "fwd_sdpa_padded", "bwd_triton"} <= set(
        result["pooling"][0]["seconds"]
    )
    for model in result["hvp"]["models"].values():
        assert {"hvp_batched_fwd_rev", "hvp_batched_rev_rev", "hvp_loop_torch_func"} <= set(model["seconds"])


def test_run_device_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", "benchmarks/kernels/run_device.sh"], cwd=REPO, check=True)
