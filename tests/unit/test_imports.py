"""transformers and scalefirst in one process, run from the repository root; the console script.

Why from the repository root: ``python -c``/``-m`` put the current directory first on sys.path, and the repo has a
top-level ``kernels/`` directory (imported as ``scalefirst_kernels``). transformers probes for the HF kernel hub
package named ``kernels``; were ``kernels/`` a regular package (with ``__init__.py``), transformers would take
ours for the hub and try ``from kernels import get_kernel``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PROBE = textwrap.dedent(
    """
    import importlib.metadata
    import importlib.util
    import json
    import sys

    import framework
    import launch
    from scalefirst_kernels import ops
    import transformers
    import torch
    from transformers.utils import is_kernels_available

    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[1, 5, 7, 2], [3, 4, 0, 0]]), attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))

    # The scalefirst kernel still works in the same process.
    pooled = ops.jagged_attention_pooling(torch.ones(1, 1, 2), torch.ones(2, 1, 2), torch.ones(2, 1, 2), torch.tensor([0, 2]))

    try:
        hf_kernels_version = importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        hf_kernels_version = None
    spec = importlib.util.find_spec("kernels")
    loaded = sys.modules.get("kernels")
    print(json.dumps({
        "cwd_on_path": sys.path[0],
        "hidden_shape": list(out.last_hidden_state.shape),
        "hidden_finite": bool(torch.isfinite(out.last_hidden_state).all()),
        "pooled": pooled.flatten().tolist(),
        "is_kernels_available": bool(is_kernels_available()),
        "hf_kernels_version": hf_kernels_version,
        "spec": None if spec is None else {
            "origin": spec.origin,
            "locations": list(spec.submodule_search_locations or []),
        },
        "loaded_file": None if loaded is None else getattr(loaded, "__file__", None),
        "ops_file": ops.__file__,
        "framework_file": framework.__file__,
    }))
    """
)


def _inside_repo(path: str | None) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(REPO)


def test_transformers_and_scalefirst_in_one_process_from_repo_root() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])

    assert info["cwd_on_path"] in ("", str(REPO))  # the shadowing scenario really is the one under test
    assert info["hidden_shape"] == [2, 4, 32]
    assert info["hidden_finite"]
    assert info["pooled"] == [1.0, 1.0]
    assert _inside_repo(info["ops_file"]) and Path(info["ops_file"]).parent.name == "kernels"
    assert _inside_repo(info["framework_file"])

    if info["hf_kernels_version"] is None:
        # No HF `kernels` distribution installed: transformers must not mistake our directory for it.
        assert info["is_kernels_available"] is False
    # else: a real HF kernels install may or may not be in transformers' supported version range; what matters
    # is that the module it finds is that distribution, not our directory (checked below).

    spec = info["spec"]
    if spec is not None:
        # From the repo root, `kernels` may resolve to our kernels/ directory only as a PEP 420 namespace package:
        # no __init__.py, so no origin/__file__ and nothing executed on import. transformers treats a namespace
        # package without version metadata as "not installed", which is harmless. A regular module or package
        # file inside this repo would be a real shadowing of the HF hub package.
        assert not _inside_repo(spec["origin"]), spec
        if info["hf_kernels_version"] is None:
            assert spec["origin"] in (None, "namespace"), spec
    assert not _inside_repo(info["loaded_file"]), info["loaded_file"]
    assert not (REPO / "kernels" / "__init__.py").exists()


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / ("scalefirst.exe" if os.name == "nt" else "scalefirst")
    assert script.is_file(), f"console script not installed next to {sys.executable} (pip install -e .)"
    proc = subprocess.run([str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()
    for command in ("demo", "train", "export"):
        assert command in proc.stdout
