"""Trainer families, found by name. Each is ``train(cfg) -> results dict`` (imported lazily)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

TRAINERS: dict[str, str] = {
    "ranking": "framework.trainers.ranking:train",
    "clip": "framework.trainers.clip:train",
    "daily": "framework.jobs.daily:run",
    "active": "framework.active.loop:train",
    "lvlm": "framework.trainers.lvlm:train",
}


def get_trainer(family: str) -> Callable[[Any], dict[str, Any]]:
    if family not in TRAINERS:
        raise KeyError(f"no trainer for family {family!r}; known: {sorted(TRAINERS)}")
    module, _, name = TRAINERS[family].partition(":")
    return getattr(importlib.import_module(module), name)
