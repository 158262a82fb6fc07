"""A small, deterministic ranking setup shared by the 2-process tests (module-level so spawned ranks import it).

``max_user_hist`` exceeds every list length, so no UC reservoir draw happens and a batch is a pure function of
its example indices: the same global batch is built at world size 1 and 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framework.config.schema import OptimConfig
from framework.data.ranking import RankingBatch, RankingData
from framework.data.synthetic import generate_synthetic
from framework.distributed.torchrec_sharding import dense_optimizer_factory, sparse_optimizer_spec
from framework.models.ranking.model import RankingModel
from framework.trainers.ranking import loss_fn

DIM = 16
LOCAL_BATCH = 16
TASKS = ("like", "click")


@dataclass(frozen=True)
class Case:
    formulation: str = "hybrid"
    pooling: str = "attention"
    sparse: str = "sgd"
    dense: str = "sgd"
    seed: int = 0

    def data(self) -> RankingData:
        inter = generate_synthetic(num_users=120, num_items=80, num_events=3000, task_names=TASKS, days=2, seed=3)
        return RankingData(
            inter,
            formulation=self.formulation,
            max_item_hist=20,
            max_user_hist=10_000,
            hash_sizes={"item": 64, "user": 96},
            num_time_buckets=16,
            seed=self.seed,
        )

    def model(self, data: RankingData, embedding_backend: str = "torchrec") -> RankingModel:
        torch.manual_seed(1234)
        return RankingModel(
            formulation=self.formulation,
            num_embeddings=data.num_embeddings,
            embedding_dim=DIM,
            task_names=list(data.task_names),
            pooling=self.pooling,
            num_heads=2,
            num_time_buckets=16,
            cross_layers=1,
            head_hidden=(16,),
            embedding_backend=embedding_backend,  # type: ignore[arg-type]
        )

    def optim(self) -> OptimConfig:
        return OptimConfig(sparse=self.sparse, sparse_lr=0.1, dense=self.dense, dense_lr=0.05)  # type: ignore[arg-type]


def train_batches(data: RankingData, step: int, rank: int, world_size: int) -> RankingBatch:
    """This rank's batch of global step ``step`` (global batch = LOCAL_BATCH * 2, whatever the world size)."""
    local = LOCAL_BATCH * 2 // world_size
    it = data.batches("train", batch_size=local, rank=rank, world_size=world_size, start_step=step)
    return next(iter(it))


def eval_predictions(model: torch.nn.Module, data: RankingData, rank: int, world_size: int) -> dict[int, list[float]]:
    """example_index → predicted logits for this rank's share of the test split (padding dropped)."""
    out: dict[int, list[float]] = {}
    model.eval()
    with torch.no_grad():
        for batch in data.batches("test", batch_size=64 // world_size, rank=rank, world_size=world_size):
            logits = model(batch.sparse, batch.time_buckets)
            for idx, row in zip(batch.example_index.tolist(), logits.tolist(), strict=True):
                if idx >= 0:
                    out[idx] = row
    return out


def full_state(state_dict: dict, rank: int) -> dict[str, torch.Tensor] | None:
    """Every entry of a (DMP) state dict as a full tensor on rank 0 (collective; None on other ranks)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if hasattr(value, "local_shards"):  # ShardedTensor: table-wise / column-wise shards
            full = torch.zeros(value.size()) if rank == 0 else None
            value.gather(0, full)
            out[key] = full  # type: ignore[assignment]
        else:
            out[key] = value.detach().clone()
    return out if rank == 0 else None


def assert_updates_close(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], init: dict[str, torch.Tensor], max_rel_err: float
) -> None:
    """Per parameter, ||Δgot - Δwant|| / ||Δwant|| over the change from init: a 2x or 0.5x update fails at once,
    however small the update is next to the weights (embedding rows move little per step)."""
    assert sorted(got) == sorted(want)
    for key in want:
        d_want, d_got = want[key] - init[key], got[key] - init[key]
        if d_want.norm() == 0:
            assert d_got.norm() == 0, key
            continue
        rel = float((d_got - d_want).norm() / d_want.norm())
        assert rel < max_rel_err, (
            f"{key}: relative update error {rel:.2e} (ratio {float((d_got * d_want).sum() / d_want.pow(2).sum()):.4f})"
        )


def reference_run(case: Case, steps: int, return_state: bool = False):
    """Unsharded, single process, plain torch optimizers, the global batch of every step."""
    data = case.data()
    model = case.model(data)
    sparse_cls, sparse_kw = sparse_optimizer_spec(case.optim())
    sparse = sparse_cls(model.sparse_arch.parameters(), **sparse_kw)
    dense = dense_optimizer_factory(case.optim())(
        [p for n, p in model.named_parameters() if not n.startswith("sparse_arch.")]
    )
    for step in range(steps):
        sparse.zero_grad()
        dense.zero_grad()
        batch = train_batches(data, step, rank=0, world_size=1)
        model.train()
        loss_fn(model(batch.sparse, batch.time_buckets), batch).backward()
        sparse.step()
        dense.step()
    preds = eval_predictions(model, data, 0, 1)
    if return_state:
        return preds, {k: v.detach().clone() for k, v in model.state_dict().items()}
    return preds


def assert_predictions_close(
    got: dict[int, list[float]], want: dict[int, list[float]], atol: float, rtol: float = 0
) -> None:
    assert sorted(got) == sorted(want), "sharded evaluation must cover exactly the test examples"
    keys = sorted(want)
    torch.testing.assert_close(
        torch.tensor([got[k] for k in keys]), torch.tensor([want[k] for k in keys]), atol=atol, rtol=rtol
    )
