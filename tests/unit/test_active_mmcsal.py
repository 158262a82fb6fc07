"""MMCSAL: diagnostics by hand, cold-start selectors cover the pool's clusters, the alignment sign, stage-1 SSL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from framework.active.loop import run
from framework.active.mmcsal import (
    MMCSALConfig,
    TwoTower,
    diagnostics,
    kmeans_centers,
    represent,
    select_cold_start,
    selector_objective,
    train_stage1,
)
from framework.config import load_job_config


def test_diagnostics_by_hand() -> None:
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = diagnostics(r, r)
    assert d["delta_gap"] == 0.0 and d["s_cross"] == pytest.approx(1.0)
    assert d["s_uni_m1"] == pytest.approx(-4.0)  # |r_1 - r_2|^2 = 2: log exp(-2 * 2)
    d = diagnostics(r, -r)
    assert d["delta_gap"] == pytest.approx(math.sqrt(2)) and d["s_cross"] == pytest.approx(-1.0)


def _clustered(n_per: int = 30, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k equal clusters, the second modality a rotated, separately noised copy of the first."""
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(k, 8, generator=g), dim=1) * 3
    cluster = torch.arange(k).repeat_interleave(n_per)
    r1 = F.normalize(centers[cluster] + 0.3 * torch.randn(k * n_per, 8, generator=g), dim=1)
    rotation = torch.linalg.qr(torch.randn(8, 8, generator=g))[0]
    r2 = F.normalize(centers[cluster] @ rotation + 0.3 * torch.randn(k * n_per, 8, generator=g), dim=1)
    return r1, r2, cluster


def test_cold_start_selectors_cover_the_clusters_better_than_random() -> None:
    """Four equal clusters, budget 4, 3 pools x 6 selector seeds: the optimized selectors' picks cover more clusters
    on average than the random samples they start from (measured 3.5 vs 2.8 of 4; a random pick covers all four
    with probability 4!/4^4 = 9%). The optimization is local: it does not always find all four."""
    mine, rand = [], []
    for pool_seed in range(3):
        r1, r2, cluster = _clustered(seed=pool_seed)
        for s in range(6):
            picked = select_cold_start(r1, r2, 4, MMCSALConfig(selector_epochs=300, selector_lr=0.01), seed=s)
            assert picked.unique().numel() == 4
            mine.append(len(set(cluster[picked].tolist())))
            rand.append(len(set(cluster[select_cold_start(r1, r2, 4, MMCSALConfig(selector_epochs=0), s)].tolist())))
    assert sum(mine) / len(mine) > sum(rand) / len(rand) + 0.4, (mine, rand)


def test_alignment_sign_is_configurable() -> None:
    r1, r2, _ = _clustered()
    res = {}
    for sign in (1.0, -1.0):
        cfg = MMCSALConfig(selector_epochs=200, selector_lr=0.05, align_sign=sign, lambda_align=2.0)
        g = torch.Generator().manual_seed(0)
        t1 = torch.randn(4, 8, generator=g).requires_grad_()
        t2 = torch.randn(4, 8, generator=g).requires_grad_()
        opt = torch.optim.Adam([t1, t2], lr=0.05)
        for _ in range(200):
            opt.zero_grad()
            selector_objective(t1, t2, r1, r2, cfg)["loss"].backward()
            opt.step()
        res[sign] = float(selector_objective(t1, t2, r1, r2, cfg)["alignment"].detach())
    assert res[1.0] < res[-1.0]  # +1 pulls the modalities' selectors together (1 - cosine smaller)


def test_stage1_ssl_aligns_the_modalities() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n = 256
    y = torch.randint(0, 4, (n,), generator=g)
    base = torch.randn(4, 12, generator=g)
    x1 = base[y] + 0.3 * torch.randn(n, 12, generator=g)
    x2 = base[y] @ torch.randn(12, 6, generator=g) + 0.3 * torch.randn(n, 6, generator=g)
    model = TwoTower(nn.Sequential(nn.Linear(12, 16), nn.ReLU()), nn.Sequential(nn.Linear(6, 16), nn.ReLU()),
                     16, 16, dim=8)  # fmt: skip
    before = diagnostics(*represent(model, x1, x2))["s_cross"]
    history = train_stage1(model, x1, x2, MMCSALConfig(epochs=8, warmup=3, prototypes=4, batch_size=64, lr=3e-3), 0)
    after = diagnostics(*represent(model, x1, x2))["s_cross"]
    assert history[2] < history[0] and after > before + 0.2


def test_kmeans_centers_ablation_covers_every_cluster() -> None:
    for pool_seed in range(3):
        r1, r2, cluster = _clustered(seed=pool_seed)
        picked = kmeans_centers(r1, r2, 4, seed=0)
        assert picked.unique().numel() == 4 and set(cluster[picked].tolist()) == {0, 1, 2, 3}


FAST = ["loop.seeds=[0,1]", "loop.rounds=1", "loop.strategies=[random,entropy]", "fit.steps=5", "mmcsal.epochs=2",
        "mmcsal.warmup=1", "mmcsal.selector_epochs=5"]  # fmt: skip


def test_loop_mmcsal_cold_start_is_shared_by_strategies_and_reused(tmp_path: Path) -> None:
    cfg = load_job_config("configs/active/multimodal.yaml", [*FAST, "loop.initial_strategy=mmcsal",
                                                             f"loop.run_dir={tmp_path}"])  # fmt: skip
    results = run(cfg)
    for seed in (0, 1):
        record = json.loads((tmp_path / "cold_start" / f"seed{seed}.json").read_text())
        assert record["method"] == "mmcsal" and len(set(record["labeled"])) == 10
        assert set(record["diagnostics"]) == {"delta_gap", "s_uni_m1", "s_uni_m2", "s_cross"}
        for strategy in ("random", "entropy"):
            state = results[strategy][seed]
            assert state["initial_strategy"] == "mmcsal"
            assert state["labeled"][:10] == record["labeled"]
    assert results["random"][0]["labeled"][:10] != results["random"][1]["labeled"][:10]
    # A new strategy in the same run dir reuses the recorded pick instead of recomputing it: edit the record and
    # the new curve starts from the edited labels.
    record = json.loads((tmp_path / "cold_start" / "seed0.json").read_text())
    record["labeled"] = list(range(10))
    (tmp_path / "cold_start" / "seed0.json").write_text(json.dumps(record))
    again = load_job_config("configs/active/multimodal.yaml", [*FAST, "loop.initial_strategy=mmcsal",
                                                               "loop.seeds=[0]", "loop.strategies=[margin]",
                                                               f"loop.run_dir={tmp_path}"])  # fmt: skip
    assert run(again)["margin"][0]["labeled"][:10] == list(range(10))
    # A run dir of a random cold start refuses to continue as an mmcsal one.
    plain = load_job_config("configs/active/multimodal.yaml", [*FAST, f"loop.run_dir={tmp_path / 'plain'}"])
    run(plain)
    with pytest.raises(ValueError, match="cold start"):
        run(load_job_config("configs/active/multimodal.yaml", [*FAST, "loop.initial_strategy=mmcsal",
                                                               f"loop.run_dir={tmp_path / 'plain'}"]))  # fmt: skip


def test_mmcsal_cold_start_needs_two_modalities() -> None:
    with pytest.raises(ValueError, match="data.pool"):
        load_job_config("configs/active/digits.yaml", ["loop.initial_strategy=mmcsal"])
