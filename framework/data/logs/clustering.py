"""UC-Clustering: users replaced by cluster ids from Louvain on the user-item engagement graph (UCR chapter §3.4.3),
updated incrementally day by day under two constraints.

Each update builds the bipartite graph of the day's positive engagements (an edge user–item weighted by its count),
runs Louvain (python-louvain's ``best_partition``, seeded, started from the previous assignment so communities carry
over), and turns the communities into user clusters:

1. **Stable labels**: a new community takes the id of the old cluster most of its previously-assigned users were in
   (greedy by overlap, each old id used once); the rest get fresh ids.
2. **Re-mapping ratio**: at most ``max_remap_ratio`` of the previously-assigned users present in the update may
   change cluster; beyond that, the users with the smallest overlap gain (then by raw id) keep their old cluster.
3. **Size cap**: a cluster above ``max_cluster_size`` keeps its old members (at most the cap: it respected it
   before) and moves the newcomers into fresh clusters of at most the cap each, in raw-id order.

Users never seen in an update keep their cluster; users never clustered map to "no cluster" (-1), which the
batches send to row 0. Deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True, slots=True)
class ClusteringConfig:
    max_cluster_size: int = 200
    """No cluster holds more users than this."""
    max_remap_ratio: float = 0.1
    """Share of previously-clustered users (of those in an update) that may change cluster in that update."""
    resolution: float = 1.0
    """Louvain resolution (larger: smaller communities)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_cluster_size < 1:
            raise ValueError(f"max_cluster_size must be >= 1, got {self.max_cluster_size}")
        if not 0.0 <= self.max_remap_ratio <= 1.0:
            raise ValueError(f"max_remap_ratio must be in [0, 1], got {self.max_remap_ratio}")
        if self.resolution <= 0:
            raise ValueError(f"resolution must be > 0, got {self.resolution}")


@dataclass(frozen=True)
class UpdateStats:
    users: int
    """Users in this update's graph."""
    previously_clustered: int
    remapped: int
    """Previously-clustered users whose cluster changed."""
    new_users: int
    clusters: int
    """Clusters in use after the update."""
    largest: int


class UserClusters:
    """Raw user id -> cluster id, updated with :meth:`update`; :meth:`__call__` maps ids (-1: no cluster)."""

    def __init__(self, cfg: ClusteringConfig) -> None:
        self.cfg = cfg
        self.users = np.empty(0, np.int64)  # sorted raw ids
        self.cluster = np.empty(0, np.int64)  # their clusters
        self.next_id = 0
        self.updates = 0

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, np.int64)
        if not self.users.size:
            return np.full(raw.shape, -1, np.int64)
        pos = np.searchsorted(self.users, raw).clip(0, self.users.size - 1)
        return np.where(self.users[pos] == raw, self.cluster[pos], -1)

    def update(self, users: np.ndarray, items: np.ndarray) -> UpdateStats:
        """Fold one period's positive engagements (parallel arrays of raw user and item ids) into the clusters."""
        import community as community_louvain  # python-louvain
        import networkx as nx

        cfg = self.cfg
        pairs, weight = np.unique(np.stack([np.asarray(users, np.int64), np.asarray(items, np.int64)]), axis=1,
                                  return_counts=True)  # fmt: skip
        graph = nx.Graph()
        graph.add_weighted_edges_from(
            (("u", int(u)), ("i", int(i)), int(w)) for (u, i), w in zip(pairs.T, weight, strict=True)
        )
        present = np.unique(pairs[0])
        old = self(present)
        known = old >= 0
        # Start from the previous assignment: known users in their cluster, every other node alone.
        start = {node: k for k, node in enumerate(graph.nodes)}
        offset = len(start)
        for u, c in zip(present[known].tolist(), old[known].tolist(), strict=True):
            start[("u", u)] = offset + c
        part = community_louvain.best_partition(graph, partition=start, resolution=cfg.resolution,
                                                random_state=cfg.seed + self.updates)  # fmt: skip
        community = np.array([part[("u", u)] for u in present.tolist()], np.int64)

        # 1. stable labels: each community takes the old cluster most of its known users were in.
        new = np.full(present.size, -1, np.int64)
        gain = np.zeros(present.size)  # how many of a user's community are with it in its old cluster (for 2.)
        taken: set[int] = set()
        if known.any():
            comm_k, old_k = community[known], old[known]
            combos, counts = np.unique(np.stack([comm_k, old_k]), axis=1, return_counts=True)
            for j in np.argsort(-counts, kind="stable"):
                comm, cl = int(combos[0, j]), int(combos[1, j])
                if cl in taken or (new[community == comm] >= 0).any():
                    continue
                new[community == comm] = cl
                taken.add(cl)
        for comm in np.unique(community[new < 0]).tolist():
            new[community == comm] = self._fresh()
        # 2. re-mapping ratio.
        changed = np.flatnonzero(known & (new != old))
        budget = int(np.floor(cfg.max_remap_ratio * int(known.sum())))
        if changed.size > budget:
            same = {c: int((new == c).sum()) for c in np.unique(new[changed]).tolist()}
            gain[changed] = [same[c] for c in new[changed].tolist()]
            order = changed[np.lexsort((present[changed], -gain[changed]))]  # biggest gain first, then by id
            new[order[budget:]] = old[order[budget:]]
            changed = order[:budget]
        # 3. size cap: over-full clusters keep their old members and send newcomers to fresh clusters.
        merged_users, merged_cluster = self._merge(present, new)
        sizes = dict(zip(*np.unique(merged_cluster, return_counts=True), strict=True))
        for c in [c for c, n in sizes.items() if n > cfg.max_cluster_size]:
            newcomers = np.flatnonzero((new == c) & (old != c))
            for start_at in range(0, newcomers.size, cfg.max_cluster_size):
                new[newcomers[start_at : start_at + cfg.max_cluster_size]] = self._fresh()
        self.users, self.cluster = self._merge(present, new)
        self.updates += 1
        sizes_after = np.unique(self.cluster, return_counts=True)[1]
        return UpdateStats(
            users=int(present.size), previously_clustered=int(known.sum()),
            remapped=int((known & (new != old)).sum()), new_users=int((~known).sum()),
            clusters=int(sizes_after.size), largest=int(sizes_after.max()) if sizes_after.size else 0,
        )  # fmt: skip

    def _fresh(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _merge(self, present: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All users (sorted) with ``present`` reassigned to ``new``."""
        keep = ~np.isin(self.users, present)
        users = np.concatenate([self.users[keep], present])
        cluster = np.concatenate([self.cluster[keep], new])
        o = np.argsort(users, kind="stable")
        return users[o], cluster[o]

    def save(self, path: str | Path) -> None:
        np.savez(Path(path), users=self.users, cluster=self.cluster, meta=np.array([self.next_id, self.updates]))

    @classmethod
    def load(cls, path: str | Path, cfg: ClusteringConfig) -> UserClusters:
        with np.load(Path(path), allow_pickle=False) as z:
            out = cls(cfg)
            out.users, out.cluster = z["users"].copy(), z["cluster"].copy()
            out.next_id, out.updates = (int(x) for x in z["meta"])
        return out
