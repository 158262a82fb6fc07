#!/usr/bin/env bash
# Idempotent set-up: creates .venv (or $SCALEFIRST_VENV) with the pinned CPU stack and an editable scalefirst.
# Fast (<1 s) when nothing changed: a stamp holds the hash of the files that define the environment.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SCALEFIRST_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
STAMP="$VENV/.scalefirst-setup"
WANT="$(cat "$ROOT/launch/setup.sh" "$ROOT/launch/requirements-cpu.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$VENV/bin/python" -c "import torchrec, framework, scalefirst_kernels" 2>/dev/null; then
  exit 0
fi

echo "[setup] building $VENV (pinned CPU stack: torch 2.13.0, fbgemm-gpu-cpu 1.8.0, torchrec 1.8.0)" >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "setuptools>=68" wheel
# CPU wheel of torch; a bare `torch` or a range would pull GBs of CUDA wheels.
"${PIP[@]}" torch==2.13.0
# torchrec declares the CUDA fbgemm-gpu, which fails to load without libtorch_cuda: install the CPU build instead.
"${PIP[@]}" --no-deps fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0
"${PIP[@]}" -r "$ROOT/launch/requirements-cpu.txt"
# open-clip-torch ships CLIP's BPE vocabulary (the clip_bpe tokenizer's default) and the tokenizer its ids are tested
# against; its own dependencies (torchvision, timm, huggingface-hub) are not needed for that and torchvision does
# not load with the CPU torch: --no-deps, and never `import open_clip` (its __init__ imports torchvision).
"${PIP[@]}" --no-deps open-clip-torch==3.3.0
# baal (tests compare the AL baselines with it) declares jupyter, which nothing here needs.
"${PIP[@]}" --no-deps baal==2.1.0
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"
"$VENV/bin/python" -c "import torch, torchrec, fbgemm_gpu, framework, scalefirst_kernels; from framework.data.clip.bpe import default_vocab_path; assert default_vocab_path(), 'open_clip vocabulary missing'; print('[setup] ok: torch', torch.__version__)" >&2
echo "$WANT" > "$STAMP"
