"""Export a (sharded, any world size) ranking checkpoint to a plain state dict for single-process inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from framework.checkpoint.dcp import Checkpointer, load_model_state_plain, save_atomic
from framework.config.loader import from_dict
from framework.config.schema import RankingJobConfig
from framework.models.ranking.model import RankingModel, build_ranking_model


def _model_from_meta(meta: dict[str, Any]) -> RankingModel:
    cfg = from_dict(RankingJobConfig, meta["config"])
    return build_ranking_model(cfg.model, meta["num_embeddings"], meta["task_names"], cfg.data.num_time_buckets)


def export_plain(checkpoint: str | Path, out: str | Path) -> Path:
    """Write ``{"state_dict", "meta"}`` loadable by :func:`load_exported` without torch.distributed."""
    meta = Checkpointer.read_meta(checkpoint)
    model = _model_from_meta(meta)
    load_model_state_plain(checkpoint, model)
    return save_atomic({"state_dict": model.state_dict(), "meta": meta}, out)


def load_exported(path: str | Path) -> RankingModel:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = _model_from_meta(payload["meta"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()
