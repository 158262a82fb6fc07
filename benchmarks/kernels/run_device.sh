#!/usr/bin/env bash
# One prepared GPU session (issue 9): the kernel parity tests on CUDA, then every kernel benchmark.
#   bash benchmarks/kernels/run_device.sh            # from a clean checkout: writes benchmarks/results/kernels_h200.json
#   OUT=/some/dir SCALEFIRST_COMMIT=<sha> bash benchmarks/kernels/run_device.sh   # a tree copy without .git
# Needs torch with CUDA + triton (+ pytest, hypothesis); not torchrec or deepspeed. About 5 minutes on an H200.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUTDIR="${OUT:-benchmarks/results}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
# kernels/ is imported as scalefirst_kernels (pyproject package-dir); without an install, a link provides the name.
if ! "$PY" -c "import scalefirst_kernels" 2>/dev/null; then
  SHIM="$(mktemp -d)"
  ln -s "$PWD/kernels" "$SHIM/scalefirst_kernels"
  export PYTHONPATH="$SHIM:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export SCALEFIRST_COMMIT="${SCALEFIRST_COMMIT:-$(git rev-parse HEAD 2>/dev/null || true)}"
"$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; print('[device]', torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)"
set +e
"$PY" -m pytest -q -m gpu tests/kernels -p no:cacheprovider 2>&1 | tee "$OUTDIR/kernels_gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
set -e
echo "[device] GPU parity tests exit code $tests_rc"
"$PY" benchmarks/kernels/bench_gpu.py --out "$OUTDIR/kernels_h200.json"
exit "$tests_rc"
