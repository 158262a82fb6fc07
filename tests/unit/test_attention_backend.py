"""Kernel backends in configs: ``model.attention_backend`` (ranking pooling) and ``loss.kernel_backend`` (RankCLIP
Plackett-Luce terms) are validated with the key named, and reach the kernels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scalefirst_kernels import ops

from framework.config import ConfigError, load_job_config
from framework.models.ranking.model import RankingModel, build_ranking_model
from framework.models.ranking.pooling import TargetedAttentionPooling

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "ranking" / "demo.yaml"
ROWS = {"item": 30, "user": 20}
CLI_SOURCE = "<command line>"


def test_default_is_auto_and_every_pool_gets_the_configured_backend() -> None:
    assert load_job_config(DEMO).model.attention_backend == "auto"
    cfg = load_job_config(DEMO, ["model.attention_backend=reference", "model.formulation=hybrid"])
    model = build_ranking_model(cfg.model, ROWS, ["like"], cfg.data.num_time_buckets)
    pools = [m for m in model.modules() if isinstance(m, TargetedAttentionPooling)]
    assert len(pools) == 2 and {p.kernel_backend for p in pools} == {"reference"}


def test_unknown_value_names_the_key() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.attention_backend: expected one of \['auto', 'reference', 'triton'\]"
    ):
        load_job_config(DEMO, ["model.attention_backend=cuda"])


def test_triton_without_the_package_is_a_config_error_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # Asking for a backend that cannot run fails before anything is built or launched, never falls back.
    load_job_config(DEMO, ["model.attention_backend=triton"])  # installed here: accepted
    monkeypatch.setattr(ops, "triton_installed", lambda: False)
    with pytest.raises(ConfigError) as info:
        load_job_config(DEMO, ["model.attention_backend=triton"])
    msg = str(info.value)
    assert msg.startswith("model.attention_backend='triton': ") and "not installed" in msg and CLI_SOURCE in msg
    with pytest.raises(ops.BackendUnavailableError, match="triton"):
        RankingModel(formulation="ucr", num_embeddings=ROWS, embedding_dim=8, task_names=["like"],
                     attention_backend="triton")  # fmt: skip


def test_reference_and_auto_compute_the_same() -> None:
    cfg = load_job_config(DEMO, ["model.embedding_dim=8", "model.head_hidden=[8]"])
    outputs = []
    for backend in ("auto", "reference"):
        torch.manual_seed(0)
        pool = TargetedAttentionPooling(8, 2, num_time_buckets=cfg.data.num_time_buckets, kernel_backend=backend)
        g = torch.Generator().manual_seed(1)
        target, hist = torch.randn(3, 8, generator=g), torch.randn(5, 8, generator=g)
        outputs.append(pool(target, hist, torch.tensor([0, 2, 2, 5]), torch.tensor([0, 1, 2, 3, 4])))
    assert torch.equal(outputs[0], outputs[1])


def test_rankclip_loss_kernel_backend_is_validated_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    clip_demo = REPO / "configs" / "clip" / "demo.yaml"
    assert load_job_config(clip_demo).loss.kernel_backend == "auto"
    assert load_job_config(clip_demo, ["loss.kernel_backend=triton"]).loss.kernel_backend == "triton"
    with pytest.raises(ConfigError, match=r"loss\.kernel_backend: expected one of"):
        load_job_config(clip_demo, ["loss.kernel_backend=cuda"])
    monkeypatch.setattr(ops, "triton_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"loss\.kernel_backend='triton': .*not installed"):
        load_job_config(clip_demo, ["loss.kernel_backend=triton"])
