"""Checks ``scalefirst train``/``demo`` run in the parent process, before torchrun starts any rank.

A bad key, value, data path or a kernel backend this machine cannot run then costs one line (:class:`~framework.config.ConfigError`, exit status 2) instead
of a traceback per rank plus torchrun's ChildFailedError. The data checks are those the trainers would fail on
first: they reuse the loaders' own path resolution, so both agree on what exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from framework.config import ConfigError, load_job_config
from framework.config.loader import key_source


def _kernel_backend(backend: str) -> None:
    """The trainers run on CUDA when there is a device, else on CPU, where Triton kernels run only under the
    (test-only) interpreter: refuse ``triton`` up front instead of on every rank's first step."""
    import torch

    if backend == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "'triton' needs a CUDA device, and this machine has none (TRITON_INTERPRET=1 runs the kernels in the "
            "Triton interpreter: for parity checks, far too slow to train); use auto or reference"
        )


def _ranking_paths(cfg: Any) -> dict[str, Callable[[], object]]:
    checks: dict[str, Callable[[], object]] = {
        "model.attention_backend": lambda: _kernel_backend(cfg.model.attention_backend)
    }
    if cfg.data.source != "movielens":
        return checks
    from framework.data.ranking.movielens import resolve_ratings_file

    checks["data.path"] = lambda: resolve_ratings_file(Path(cfg.data.path), cfg.data.format)
    return checks


def _clip_paths(cfg: Any) -> dict[str, Callable[[], object]]:
    from framework.data.clip.loader import expand_shards

    checks: dict[str, Callable[[], object]] = {
        "loss.kernel_backend": lambda: _kernel_backend(cfg.loss.kernel_backend),
        "data.train_shards": lambda: expand_shards(cfg.data.train_shards),
    }
    if cfg.data.val_shards is not None:
        checks["data.val_shards"] = lambda: expand_shards(cfg.data.val_shards)
    if cfg.data.tokenizer == "clip_bpe":
        checks["data.vocab_path"] = lambda: _vocab_file(cfg.data.vocab_path)
    return checks


def _vocab_file(vocab_path: str | None) -> Path:
    from framework.data.clip.bpe import resolve_vocab_path

    path = resolve_vocab_path(vocab_path)  # None: the file open-clip-torch ships
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    return path


DATA_PATH_CHECKS: dict[str, Callable[[Any], dict[str, Callable[[], object]]]] = {
    "ranking": _ranking_paths,
    "clip": _clip_paths,
}
"""family → (cfg → {dotted key: check raising FileNotFoundError/ValueError}): data paths and kernel backends. New
trainer families register here."""


def validate_job(config: str | Path, overrides: Sequence[str] = ()) -> Any:
    """Load the job config (as every rank will) and check its data paths; raises :class:`ConfigError`."""
    cfg = load_job_config(config, overrides)
    for key, check in DATA_PATH_CHECKS.get(cfg.family, lambda _: {})(cfg).items():
        try:
            check()
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{key}: {e} (from {key_source(config, key, overrides)})") from e
    return cfg


def one_line(error: BaseException) -> str:
    """The error message on one line (YAML parser errors span several)."""
    return " ".join(str(error).split())
