"""``scalefirst export`` in one process: a DCP checkpoint → a plain file that ``torch.load(weights_only=True)`` reads
and :func:`load_exported` turns back into the same model (the 2-rank sharded case is in tests/integration)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from framework.checkpoint.dcp import Checkpointer
from framework.checkpoint.export import export_plain, load_exported
from framework.config.loader import to_dict
from framework.config.schema import ModelConfig, RankingJobConfig
from framework.models.ranking.model import build_ranking_model
from launch.cli import main

NUM_EMBEDDINGS = {"item": 30, "user": 20}
TASKS = ["like", "click"]
CFG = RankingJobConfig(model=ModelConfig(formulation="hybrid", embedding_dim=8, head_hidden=[8]))


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_ranking_model(CFG.model, NUM_EMBEDDINGS, TASKS, CFG.data.num_time_buckets)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    cfg = CFG
    model = make_model(seed=0)
    meta = {"world_size": 1, "config": to_dict(cfg), "num_embeddings": NUM_EMBEDDINGS, "task_names": TASKS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that it runs without a process group
        return Checkpointer(tmp_path / "checkpoints").save(3, {"model": model.state_dict()}, meta)


def test_export_round_trip_loads_with_weights_only(checkpoint: Path, tmp_path: Path) -> None:
    out = export_plain(checkpoint, tmp_path / "model.pt")
    payload = torch.load(out, map_location="cpu", weights_only=True)  # tensors and plain data only
    assert payload["meta"]["step"] == 3 and payload["meta"]["task_names"] == TASKS

    want = make_model(seed=0).state_dict()  # the weights the checkpoint was saved from
    got = load_exported(out).state_dict()
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)


def test_cli_export(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert not load_exported(out).training
