"""The one module that builds TorchRec sharding.

planner → sparse optimizer fused into the embedding backward → DistributedModelParallel → CombinedOptimizer
with the dense optimizer. Models never shard themselves; trainers call :func:`shard_model`.

Gradient semantics: a step at world size W equals one single-process step on the global batch (W × local
batch). Each rank's loss is the mean over its local batch; DDP averages the dense gradients over ranks and
TorchRec's backward all-to-all divides the embedding gradients by W (``comm_ops`` gradient division, which we
assert is on), so every parameter sees the gradient of the global-batch mean. This is what makes
sharded-vs-unsharded parity and resuming at another world size exact.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed import comm_ops
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from framework.config.schema import OptimConfig
from framework.distributed.env import DistEnv

logger = logging.getLogger(__name__)

CPU_SHARDING_TYPES = ("table_wise", "column_wise", "data_parallel")
GPU_SHARDING_TYPES = (*CPU_SHARDING_TYPES, "row_wise")
SPARSE_PREFIX = "sparse_arch."


def sparse_optimizer_spec(cfg: OptimConfig) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """Optimizer class + kwargs for the embedding tables (fused into FBGEMM TBE backward when sharded)."""
    lr = cfg.sparse_lr
    if cfg.sparse == "sgd":
        return torch.optim.SGD, {"lr": lr}
    if cfg.sparse == "adagrad":
        return torch.optim.Adagrad, {"lr": lr, "eps": 1e-8}
    if cfg.sparse == "rowwise_adagrad":
        return RowWiseAdagrad, {"lr": lr, "eps": 1e-8}
    if cfg.sparse == "adam":
        return torch.optim.Adam, {"lr": lr, "eps": 1e-8}
    raise ValueError(f"optim.sparse: unknown optimizer {cfg.sparse!r}")


def dense_optimizer_factory(cfg: OptimConfig):
    def make(params: Any) -> torch.optim.Optimizer:
        if cfg.dense == "sgd":
            return torch.optim.SGD(params, lr=cfg.dense_lr, weight_decay=cfg.weight_decay)
        if cfg.dense == "adam":
            return torch.optim.Adam(params, lr=cfg.dense_lr, weight_decay=cfg.weight_decay)
        if cfg.dense == "adamw":
            return torch.optim.AdamW(params, lr=cfg.dense_lr, weight_decay=cfg.weight_decay)
        if cfg.dense == "adagrad":
            return torch.optim.Adagrad(params, lr=cfg.dense_lr, weight_decay=cfg.weight_decay, eps=1e-8)
        raise ValueError(f"optim.dense: unknown optimizer {cfg.dense!r}")

    return make


# --------------------------------------------------------------------------------------------------------------
# fbgemm-gpu-cpu 1.8.0: the CPU dense TBE kernel (used by TorchRec's data_parallel sharding) ignores
# PoolingMode.NONE and sum-pools every bag, so a data-parallel EmbeddingCollection returns B×T rows instead of
# one row per id and TorchRec fails in construct_jagged_tensors. We probe for the bug and, only if present,
# route unpooled CPU lookups through an exact gather on the same flat weight (gradients flow to it as usual).
# --------------------------------------------------------------------------------------------------------------
_DENSE_PATCHED = False


def _dense_unpooled_lookup_is_broken() -> bool:
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import DenseTableBatchedEmbeddingBagsCodegen

    probe = DenseTableBatchedEmbeddingBagsCodegen([(4, 4)], pooling_mode=PoolingMode.NONE, use_cpu=True)
    with torch.no_grad():
        out = probe(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]))
    return out.shape[0] != 3


def _unpooled_dense_lookup(emb: nn.Module, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    dims = (emb.D_offsets[1:] - emb.D_offsets[:-1]).tolist()
    if len(set(dims)) != 1:
        raise NotImplementedError(f"unpooled dense lookup needs equal table dims, got {dims}")
    num_features, dim = len(dims), dims[0]
    lengths = offsets[1:] - offsets[:-1]
    batch = lengths.numel() // num_features
    feature_of_bag = torch.arange(lengths.numel(), device=indices.device) // batch
    feature_of_id = torch.repeat_interleave(feature_of_bag, lengths, output_size=indices.numel())
    start = emb.weights_offsets.to(indices.device)[feature_of_id] + indices.long() * dim
    return emb.weights[start[:, None] + torch.arange(dim, device=indices.device)]


def _ensure_dense_unpooled_fix() -> None:
    global _DENSE_PATCHED
    if _DENSE_PATCHED:
        return
    _DENSE_PATCHED = True
    if not _dense_unpooled_lookup_is_broken():
        return
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import DenseTableBatchedEmbeddingBagsCodegen

    original = DenseTableBatchedEmbeddingBagsCodegen.forward

    def forward(
        self,
        indices,
        offsets,
        per_sample_weights=None,
        feature_requires_grad=None,
        batch_size_per_feature_per_rank=None,
    ):  # noqa: E501
        if self.pooling_mode != PoolingMode.NONE or not self.use_cpu:
            return original(
                self, indices, offsets, per_sample_weights, feature_requires_grad, batch_size_per_feature_per_rank
            )
        if per_sample_weights is not None or batch_size_per_feature_per_rank is not None:
            raise NotImplementedError("unpooled CPU dense lookup: per-sample weights / VBE are not supported")
        return _unpooled_dense_lookup(self, indices, offsets)

    DenseTableBatchedEmbeddingBagsCodegen.forward = forward
    logger.info("fbgemm CPU dense TBE ignores PoolingMode.NONE: using exact unpooled gather for data_parallel tables")


# --------------------------------------------------------------------------------------------------------------


def constraints_for(
    tables: Mapping[str, int], embedding_dim: int, sharding_type: str, env: DistEnv
) -> dict[str, ParameterConstraints]:
    allowed = GPU_SHARDING_TYPES if env.device.type == "cuda" else CPU_SHARDING_TYPES
    if sharding_type == "auto":
        # The planner may otherwise propose row_wise, which the gloo backend cannot run.
        return {t: ParameterConstraints(sharding_types=list(allowed)) for t in tables}
    if sharding_type not in allowed:
        raise ValueError(
            f"sharding.sharding_type={sharding_type!r} is not supported on {env.device.type} "
            f"(backend {env.backend}); choose one of {list(allowed)}"
        )
    kernel = "dense" if sharding_type == "data_parallel" else "fused"
    constraints = {}
    for table in tables:
        kw: dict[str, Any] = {"sharding_types": [sharding_type], "compute_kernels": [kernel]}
        if sharding_type == "column_wise":
            shard_dim = embedding_dim // env.world_size
            if embedding_dim % env.world_size or shard_dim % 4:
                raise ValueError(
                    f"column_wise over {env.world_size} ranks needs embedding_dim divisible by 4*world_size, "
                    f"got {embedding_dim}"
                )
            kw["min_partition"] = shard_dim  # one column shard per rank
        constraints[table] = ParameterConstraints(**kw)
    return constraints


@dataclass
class ShardedModel:
    model: DistributedModelParallel
    optimizer: CombinedOptimizer
    plan: ShardingPlan

    def plan_summary(self) -> dict[str, dict[str, Any]]:
        """table → {sharding_type, ranks} for logs and the metrics JSON."""
        out: dict[str, dict[str, Any]] = {}
        for module_plan in self.plan.plan.values():
            for table, ps in module_plan.items():  # type: ignore[union-attr]
                ranks = sorted({r for r in (ps.ranks or [])})
                out[table] = {"sharding_type": ps.sharding_type, "compute_kernel": ps.compute_kernel, "ranks": ranks}
        return out


def shard_model(
    model: nn.Module,
    *,
    tables: Mapping[str, int],
    embedding_dim: int,
    sharding_type: str,
    optim: OptimConfig,
    env: DistEnv,
) -> ShardedModel:
    """Shard ``model.sparse_arch`` (an EmbeddingCollection) with DMP and build the combined optimizer.

    The model's current weights are the initial weights of the sharded model on every rank (DMP creates fresh
    shards, so they are copied in): training is independent of the sharding plan and world size.
    """
    if not dist.is_initialized():
        raise RuntimeError("shard_model needs an initialized process group (framework.distributed.env)")
    _ensure_dense_unpooled_fix()
    if not comm_ops.get_gradient_division():
        raise RuntimeError("torchrec comm_ops gradient division is off: embedding gradients would be W× the dense ones")
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sparse_cls, sparse_kwargs = sparse_optimizer_spec(optim)
    apply_optimizer_in_backward(sparse_cls, model.sparse_arch.parameters(), dict(sparse_kwargs))  # it mutates the dict

    sharders = [EmbeddingCollectionSharder()]
    planner = EmbeddingShardingPlanner(
        topology=Topology(
            world_size=env.world_size, compute_device=env.device.type, local_world_size=env.local_world_size
        ),
        constraints=constraints_for(tables, embedding_dim, sharding_type, env),
    )
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=model, device=env.device, plan=plan, sharders=sharders)
    dmp.load_state_dict(init_state)

    non_fused = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    # data_parallel tables are plain replicated parameters (not fused): give them the sparse optimizer settings.
    dp_tables = {k: v for k, v in non_fused.items() if k.startswith(SPARSE_PREFIX)}
    dense = {k: v for k, v in non_fused.items() if not k.startswith(SPARSE_PREFIX)}
    # Unkeyed parts: optimizer state is then keyed by parameter FQN only, whichever optimizer holds a table,
    # so checkpoints stay loadable under another sharding plan.
    parts: list[Any] = [dmp.fused_optimizer]
    if dp_tables:
        parts.append(KeyedOptimizerWrapper(dp_tables, lambda p: sparse_cls(p, **sparse_kwargs)))
    parts.append(KeyedOptimizerWrapper(dense, dense_optimizer_factory(optim)))
    optimizer = CombinedOptimizer(parts)
    sharded = ShardedModel(model=dmp, optimizer=optimizer, plan=plan)
    if env.is_main:
        tables = ", ".join(f"{t} {p['sharding_type']} on {p['ranks']}" for t, p in sharded.plan_summary().items())
        logger.info("sharding plan: %s", tables)
        logger.debug("sharding plan in full:\n%s", plan)  # log.txt only (framework/logs.py)
    return sharded
