"""UC-Clustering: Louvain communities of the user-item graph, stable across updates, within the size cap and the
re-mapping budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from framework.data.logs.clustering import ClusteringConfig, UserClusters


def blocks(sizes: list[int], items_per_block: int = 8, seed: int = 0, swap: bool = False) -> tuple:
    """Users of block b engage (only) items of block b (block b+1's with swap=True)."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    first = 0
    for b, n in enumerate(sizes):
        target = (b + 1) % len(sizes) if swap else b
        for u in range(first, first + n):
            for i in rng.choice(items_per_block, 4, replace=False):
                users.append(1000 + u)
                items.append(10_000 + target * 100 + int(i))
        first += n
    return np.array(users), np.array(items)


def groups(uc: UserClusters, sizes: list[int]) -> list[set[int]]:
    out, first = [], 0
    for n in sizes:
        out.append(set(uc(np.arange(1000 + first, 1000 + first + n)).tolist()))
        first += n
    return out


def test_communities_are_found_and_stay_stable() -> None:
    uc = UserClusters(ClusteringConfig(max_cluster_size=100))
    s = uc.update(*blocks([30, 30, 30]))
    g = groups(uc, [30, 30, 30])
    assert all(len(x) == 1 for x in g) and len(set().union(*g)) == 3  # one cluster per block, all different
    assert s.new_users == 90 and s.remapped == 0 and s.largest == 30
    before = uc(np.arange(1000, 1090))
    s2 = uc.update(*blocks([30, 30, 30], seed=1))
    assert s2.remapped == 0 and (uc(np.arange(1000, 1090)) == before).all()  # same structure: same labels
    assert uc(np.array([5])).tolist() == [-1]  # never clustered


def test_size_cap() -> None:
    uc = UserClusters(ClusteringConfig(max_cluster_size=20))
    s = uc.update(*blocks([50, 15]))
    sizes = np.unique(uc(np.arange(1000, 1065)), return_counts=True)[1]
    assert sizes.max() <= 20 and s.largest <= 20 and sizes.sum() == 65
    # Newcomers to a full cluster go elsewhere; its old members stay.
    members = uc(np.arange(1000, 1050))
    uc.update(*blocks([50, 15], seed=2))
    assert np.unique(uc(np.arange(1000, 1065)), return_counts=True)[1].max() <= 20
    assert (uc(np.arange(1000, 1050)) != members).sum() <= int(0.1 * 65)  # within the default remap budget


@pytest.mark.parametrize("ratio", [0.0, 0.1, 1.0])
def test_remap_ratio_bounds_changes(ratio: float) -> None:
    uc = UserClusters(ClusteringConfig(max_cluster_size=100, max_remap_ratio=ratio))
    uc.update(*blocks([30, 30, 30]))
    before = uc(np.arange(1000, 1090))
    # Regrouped: the same 90 users now form 2 blocks of 45 (block 2 is split between them).
    s = uc.update(*blocks([45, 45], seed=3))
    changed = int((uc(np.arange(1000, 1090)) != before).sum())
    assert s.remapped == changed <= int(ratio * 90)
    if ratio == 1.0:
        assert changed >= 15 and all(len(x) == 1 for x in groups(uc, [45, 45]))  # free to follow the new structure


def test_round_trip(tmp_path: Path) -> None:
    uc = UserClusters(ClusteringConfig())
    uc.update(*blocks([10, 10]))
    uc.save(tmp_path / "c.npz")
    back = UserClusters.load(tmp_path / "c.npz", ClusteringConfig())
    assert (back(np.arange(1000, 1020)) == uc(np.arange(1000, 1020))).all() and back.next_id == uc.next_id
