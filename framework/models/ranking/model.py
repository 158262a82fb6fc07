"""ICR / UCR / Hybrid ranking model (single tower, DIN-like; UCR chapter fig. 3.1).

Legend: B = batch, L = total list elements, D = embedding dim, T = tasks, F = interaction-arch input width.

Per list channel the target's embedding queries that list (targeted attentive pooling) or the list is
sum/mean-pooled. The pooled vectors, the target embeddings and log list lengths go through a DCN-v2 cross
network, then one MLP head per task. A plain ``nn.Module``: sharding is applied from outside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from scalefirst_kernels import ops
from torch import nn
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from framework.config.schema import ModelConfig
from framework.models.ranking.embeddings import (
    TABLE_FEATURES,
    TABLES_BY_FORMULATION,
    EmbeddingBackend,
    build_sparse_arch,
)
from framework.models.ranking.pooling import SumPooling, TargetedAttentionPooling


def _mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class RankingModel(nn.Module):
    """Multi-task ranking model over id lists.

    Args:
        formulation: ``icr`` (item table; user = its item list), ``ucr`` (user table; item = its user list) or
            ``hybrid`` (both tables and both lists).
        num_embeddings: rows per table used by the formulation (after hashing).
        task_names: one head per task; ``forward`` returns logits in this order.
        attention_backend: kernel of the attention pooling (``scalefirst_kernels.ops``: auto, reference, triton).

    Example::

        model = RankingModel(formulation="ucr", num_embeddings={"user": 1000}, embedding_dim=16,
                             task_names=["like"], num_time_buckets=32)
        logits_BT = model(batch.sparse, batch.time_buckets)
    """

    def __init__(
        self,
        *,
        formulation: str,
        num_embeddings: Mapping[str, int],
        embedding_dim: int,
        task_names: Sequence[str],
        pooling: str = "attention",
        num_heads: int = 2,
        attention_backend: ops.Backend = "auto",
        num_time_buckets: int = 32,
        cross_layers: int = 2,
        cross_low_rank: int | None = None,
        head_hidden: Sequence[int] = (128, 64),
        embedding_backend: EmbeddingBackend = "torchrec",
    ) -> None:
        super().__init__()
        if formulation not in TABLES_BY_FORMULATION:
            raise ValueError(f"unknown formulation {formulation!r}; choose icr, ucr or hybrid")
        self.formulation = formulation
        self.tables = TABLES_BY_FORMULATION[formulation]
        missing = set(self.tables) - set(num_embeddings)
        if missing:
            raise ValueError(f"formulation {formulation} needs tables {sorted(missing)} in num_embeddings")
        self.task_names = list(task_names)
        self.sparse_arch = build_sparse_arch(
            {t: num_embeddings[t] for t in self.tables}, embedding_dim, embedding_backend
        )

        def make_pool() -> nn.Module:
            if pooling == "attention":
                return TargetedAttentionPooling(embedding_dim, num_heads, num_time_buckets, attention_backend)
            if pooling in ("sum", "mean"):
                return SumPooling(embedding_dim, mean=pooling == "mean", num_time_buckets=num_time_buckets)
            raise ValueError(f"unknown pooling {pooling!r}; choose attention, sum or mean")

        self.pools = nn.ModuleDict({TABLE_FEATURES[t][1]: make_pool() for t in self.tables})
        # Inputs of the interaction arch: each target embedding, each pooled list, log(1 + list length) per list.
        in_features = 2 * embedding_dim * len(self.tables) + len(self.tables)
        if cross_low_rank is None:
            self.interaction: nn.Module = CrossNet(in_features, cross_layers)
        else:
            self.interaction = LowRankCrossNet(in_features, cross_layers, cross_low_rank)
        self.heads = nn.ModuleDict({t: _mlp(in_features, head_hidden, 1) for t in self.task_names})

    @property
    def feature_names(self) -> list[str]:
        return [f for t in self.tables for f in TABLE_FEATURES[t]]

    def forward(
        self,
        sparse: KeyedJaggedTensor,
        time_buckets: Mapping[str, torch.Tensor],
        share_index: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``share_index[hist feature]`` (locality batching): int64 [B], the row whose list each row uses; the
        other rows' lists are empty in ``sparse``, so each owner's list is looked up and projected once."""
        emb = self.sparse_arch(sparse)
        parts: list[torch.Tensor] = []
        dense: list[torch.Tensor] = []
        for table in self.tables:
            target_name, hist_name = TABLE_FEATURES[table]
            target_BD = emb[target_name].values()
            hist = emb[hist_name]
            offsets_B1 = hist.offsets()
            share_B = share_index.get(hist_name) if share_index else None
            pooled_BD = self.pools[hist_name](
                target_BD, hist.values(), offsets_B1, time_buckets.get(hist_name), share_B
            )
            lengths_B = hist.lengths() if share_B is None else hist.lengths()[share_B]
            parts += [target_BD, pooled_BD]
            dense.append(torch.log1p(lengths_B.to(target_BD.dtype))[:, None])
        x_BF = torch.cat(parts + dense, dim=1)
        x_BF = self.interaction(x_BF)
        return torch.cat([self.heads[t](x_BF) for t in self.task_names], dim=1)


def build_ranking_model(
    cfg: ModelConfig,
    num_embeddings: Mapping[str, int],
    task_names: Sequence[str],
    num_time_buckets: int,
    embedding_backend: EmbeddingBackend = "torchrec",
) -> RankingModel:
    return RankingModel(
        formulation=cfg.formulation,
        num_embeddings=num_embeddings,
        embedding_dim=cfg.embedding_dim,
        task_names=task_names,
        pooling=cfg.pooling,
        num_heads=cfg.num_heads,
        attention_backend=cfg.attention_backend,
        num_time_buckets=num_time_buckets if cfg.time_encoding else 0,
        cross_layers=cfg.cross_layers,
        cross_low_rank=cfg.cross_low_rank,
        head_hidden=cfg.head_hidden,
        embedding_backend=embedding_backend,
    )
