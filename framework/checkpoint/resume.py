"""Resume policy: a checkpoint only continues the run that wrote it.

Every checkpoint carries the resolved config of its run. Before loading one, the trainer compares it with the
new run's config: keys that may legitimately change on resume (more steps or epochs, logging, progress, paths,
the parallel layout) are allowed; any other difference means a different run (another lr, data or model) and is
refused with an error naming the keys, unless ``train.resume: force``, which logs them and goes on.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_MISSING = "<absent>"


class ResumeConfigError(ValueError):
    """The checkpoint in run_dir was written by a run with another config."""


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config dict (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (checkpoint value, new value)}`` for every key whose value differs (or exists in one only)."""
    a, b = flatten(saved), flatten(current)
    pairs = {k: (a.get(k, _MISSING), b.get(k, _MISSING)) for k in sorted(a.keys() | b.keys())}
    return {k: (old, new) for k, (old, new) in pairs.items() if old != new}


def check_resume_config(
    saved: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    *,
    may_change: Iterable[str],
    mode: str,
    checkpoint: str | Path,
) -> dict[str, tuple[Any, Any]]:
    """Refuse (``mode="auto"``) or log (``mode="force"``) config differences outside ``may_change``.

    Args:
        saved: the resolved config stored in the checkpoint (None: it has none, e.g. an older version wrote it).
        current: the new run's resolved config.
        may_change: dotted keys or fnmatch patterns (``sharding.*``) that may differ.
        mode: ``auto`` or ``force`` (``never`` does not get here: it loads nothing).
        checkpoint: the checkpoint, for the message.

    Returns:
        Every difference, allowed ones included (callers log them).

    Raises:
        ResumeConfigError: ``mode="auto"`` and some difference is not allowed; the message names each key with
            both values and says how to proceed.
    """
    patterns = tuple(may_change)
    if saved is None:
        if mode == "force":
            logger.warning("train.resume=force: resuming %s, which records no config", checkpoint)
            return {}
        raise ResumeConfigError(
            f"{checkpoint} records no config, so it cannot be matched with this run; use train.resume=force to "
            "continue from it anyway, or train.resume=never to start from scratch"
        )
    diffs = config_differences(saved, current)
    refused = {k: v for k, v in diffs.items() if not any(fnmatch.fnmatchcase(k, p) for p in patterns)}
    if not refused:
        return diffs
    listing = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
    if mode == "force":
        logger.warning("train.resume=force: resuming %s despite config differences: %s", checkpoint, listing)
        return diffs
    raise ResumeConfigError(
        f"{checkpoint} was written by a run with another config ({listing}). Use another train.run_dir, "
        "train.resume=never to start from scratch there, or train.resume=force to continue anyway"
    )
