"""Sparse arch: id features → per-feature jagged embeddings.

Two interchangeable backends with one contract, ``forward(KJT) -> dict[feature, JaggedTensor]``:

- ``torchrec``: :class:`torchrec.EmbeddingCollection` (unpooled sequence embeddings). This is the module that
  ``framework.distributed.torchrec_sharding`` replaces with its sharded twin; the model never shards itself.
- ``torch``: one plain ``nn.Embedding`` per table, the single-process baseline of the throughput benchmark.

Tables: ``item`` serves features target_item and item_hist, ``user`` serves target_user and user_hist, so a
target id and the ids in the list share one embedding row space (the query is the target's own embedding).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

TABLE_FEATURES: dict[str, tuple[str, str]] = {
    "item": ("target_item", "item_hist"),
    "user": ("target_user", "user_hist"),
}
TABLES_BY_FORMULATION: dict[str, tuple[str, ...]] = {"icr": ("item",), "ucr": ("user",), "hybrid": ("item", "user")}

EmbeddingBackend = Literal["torchrec", "torch"]


def init_table_(weight: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """N(0, 1/D): unit-scale dot products between rows, whatever the dimension.

    ``dim`` is the table's full dimension: TorchRec calls this on local shards (column shards are narrower,
    and a rank without a shard of the table gets an empty tensor).
    """
    dim = dim or weight.shape[-1]
    with torch.no_grad():
        return weight.normal_(0.0, 1.0 / math.sqrt(dim)) if weight.numel() else weight


def table_configs(num_embeddings: Mapping[str, int], embedding_dim: int) -> list[EmbeddingConfig]:
    return [
        EmbeddingConfig(
            name=table,
            embedding_dim=embedding_dim,
            num_embeddings=rows,
            feature_names=list(TABLE_FEATURES[table]),
            init_fn=functools.partial(init_table_, dim=embedding_dim),
        )
        for table, rows in num_embeddings.items()
    ]


class TorchEmbeddings(nn.Module):
    """Plain single-process PyTorch twin of the EmbeddingCollection: one ``nn.EmbeddingBag`` per table.

    Sequence features need one row per id, so every id is its own bag (offsets = arange); gradients are
    sparse (``sparse=True``), as a plain PyTorch recommender would train them.
    """

    def __init__(self, num_embeddings: Mapping[str, int], embedding_dim: int, sparse: bool = True) -> None:
        super().__init__()
        # Named like EmbeddingCollection.embeddings so state dicts are interchangeable between backends.
        self.embeddings = nn.ModuleDict(
            {t: nn.EmbeddingBag(n, embedding_dim, mode="sum", sparse=sparse) for t, n in num_embeddings.items()}
        )
        for emb in self.embeddings.values():
            init_table_(emb.weight)
        self._feature_table = {f: t for t in num_embeddings for f in TABLE_FEATURES[t]}

    def forward(self, features: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        out: dict[str, JaggedTensor] = {}
        for name, jt in features.to_dict().items():
            ids_L = jt.values()
            single_id_bags = torch.arange(ids_L.numel(), device=ids_L.device)
            rows_LD = self.embeddings[self._feature_table[name]](ids_L, single_id_bags)
            out[name] = JaggedTensor(values=rows_LD, lengths=jt.lengths())
        return out


def build_sparse_arch(
    num_embeddings: Mapping[str, int], embedding_dim: int, backend: EmbeddingBackend = "torchrec"
) -> nn.Module:
    if backend == "torchrec":
        return EmbeddingCollection(tables=table_configs(num_embeddings, embedding_dim), device=torch.device("cpu"))
    if backend == "torch":
        return TorchEmbeddings(num_embeddings, embedding_dim)
    raise ValueError(f"unknown embedding backend {backend!r}; choose torchrec or torch")
