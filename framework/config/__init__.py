"""Config system: YAML files (with ``base:`` chains) → typed dataclasses, ``a.b=c`` overrides."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from framework.config.loader import ConfigError, load_config, peek_key, save_config, to_dict
from framework.config.schema import JOB_SCHEMAS, RankingJobConfig

__all__ = ["ConfigError", "load_job_config", "save_config", "to_dict", "RankingJobConfig", "JOB_SCHEMAS"]


def load_job_config(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """Load a job YAML, choosing the schema from its ``family`` key (default: ranking)."""
    family = peek_key(path, "family", overrides) or "ranking"
    if family not in JOB_SCHEMAS:
        raise ConfigError(f"unknown family {family!r} in {path}; known: {sorted(JOB_SCHEMAS)}")
    return load_config(JOB_SCHEMAS[family], path, overrides)
