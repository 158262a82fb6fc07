"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run under the interpreter (parity tests on CPU). It must be set before the first
# Triton kernel is defined (triton.jit reads it at decoration), hence here, before any test imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The MovieLens-100k directory, read in place (research license: never copy it).

    Located by $SCALEFIRST_ML100K, else <repo>/../shared/data/ml-100k. Missing data
    skips the test locally but fails it under CI, where silently skipping would hide
    that the real-data checks never ran.
    """
    path = Path(os.environ.get("SCALEFIRST_ML100K", _REPO_ROOT.parent / "shared" / "data" / "ml-100k"))
    if not (path / "u.data").is_file():
        reason = f"MovieLens-100k not found at {path} (set SCALEFIRST_ML100K to the directory with u.data)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for in-process training: on a shared 2-core machine OpenMP's spinning threads make a
    run several times slower (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
