"""A small, deterministic ranking setup shared by the 2-process tests (module-level so spawned ranks import it).

``max_user_hist`` exceeds every list length, so no UC reservoir draw happens and a batch is a pure function of
its example indices: the same global batch is built at world size 1 and 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from framework.config.schema import OptimConfig
from framework.data.ranking.batches import RankingBatch, RankingData
from framework.data.ranking.synthetic import generate_synthetic
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


Pieces = dict[str, tuple[tuple[int, ...], list[tuple[tuple[int, ...], torch.Tensor]]]]
"""name → (global size, [(offsets, local tensor)]): one rank's part of a set of tensors, picklable."""

# FBGEMM's fused TBE names its optimizer state per table (``<table>.momentum1``); torch's optimizers name it so.
# (Sparse Adam is not here: FBGEMM's CPU TBE refuses it, "Optimizer adam is not supported in CPU mode".)
_FUSED_STATE_NAMES = {"adagrad": {"momentum1": "sum"}, "sgd": {}}


def local_pieces(tensors: dict[str, Any]) -> Pieces:
    """This rank's part of every tensor: a ShardedTensor (table-/column-wise) gives its local shards, a plain
    tensor (dense or data-parallel parameter, replicated) itself whole. No collective: a table-wise rank's
    fused-optimizer state lacks the tables it does not own, so the ranks could not gather it key by key."""
    out: Pieces = {}
    for key, value in tensors.items():
        if hasattr(value, "local_shards"):
            shards = [(tuple(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in value.local_shards()]
            out[key] = (tuple(value.metadata().size), shards)
        elif isinstance(value, torch.Tensor):
            out[key] = (tuple(value.shape), [((0,) * value.dim(), value.detach().clone())])
    return out


def assemble(per_rank: list[Pieces]) -> dict[str, torch.Tensor]:
    """Full tensors from every rank's :func:`local_pieces`; the replicas of a plain tensor must be identical."""
    full: dict[str, torch.Tensor] = {}
    covered: dict[str, torch.Tensor] = {}
    for pieces in per_rank:
        for key, (size, shards) in pieces.items():
            if key not in full:
                full[key], covered[key] = torch.zeros(size), torch.zeros(size, dtype=torch.bool)
            for offsets, tensor in shards:
                region = tuple(slice(o, o + n) for o, n in zip(offsets, tensor.shape, strict=True))
                if covered[key][region].any():
                    assert torch.equal(full[key][region], tensor.float()), f"{key}: replicas differ across ranks"
                full[key][region], covered[key][region] = tensor, True
    missing = [k for k, c in covered.items() if not c.all()]
    assert not missing, f"no rank holds all of {missing}"
    return full


def sharded_optimizer_state(sm: Any, case: Case) -> dict[str, Any]:
    """The combined optimizer's state as ``<param>/<torch state name>`` → tensor (ShardedTensor for fused
    tables). Fused tables keep no per-parameter ``step`` (FBGEMM counts steps in the module), so they have none."""
    out: dict[str, Any] = {}
    for param, state in sm.optimizer.state_dict()["state"].items():
        for name, value in state.items():
            if param.startswith("sparse_arch.") and "." in name:  # fused: "<table>.momentum1"
                name = _FUSED_STATE_NAMES[case.sparse][name.rsplit(".", 1)[1]]
            out[f"{param}/{name}"] = value
    return out


@dataclass
class Reference:
    preds: dict[int, list[float]]
    params: dict[str, torch.Tensor]
    """The model's state dict after the steps."""
    optim: dict[str, torch.Tensor]
    """``<param>/<state name>`` → tensor, sparse and dense optimizers together."""


def reference_train(case: Case, steps: int, sparse_grad_scale: float = 1.0, dense_grad_scale: float = 1.0) -> Reference:
    """Unsharded, single process, plain torch optimizers, the global batch of every step.

    ``sparse_grad_scale`` / ``dense_grad_scale`` multiply the embedding / dense gradients before the optimizers
    step: 2.0 is the "2x gradient error" a parity check must catch (e.g. a missing 1/W division in TorchRec's
    backward all-to-all, or DDP summing instead of averaging).
    """
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
        if sparse_grad_scale != 1.0:
            for p in model.sparse_arch.parameters():
                if p.grad is not None:
                    p.grad.mul_(sparse_grad_scale)
        if dense_grad_scale != 1.0:
            for n, p in model.named_parameters():
                if p.grad is not None and not n.startswith("sparse_arch."):
                    p.grad.mul_(dense_grad_scale)
        sparse.step()
        dense.step()
    names = {p: n for n, p in model.named_parameters()}
    optim = {
        f"{names[p]}/{k}": v.detach().clone()
        for opt in (sparse, dense)
        for p, state in opt.state.items()
        for k, v in state.items()
    }
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Reference(eval_predictions(model, data, 0, 1), params, optim)


def reference_run(case: Case, steps: int, return_state: bool = False):
    """:func:`reference_train`'s predictions (and model state dict with ``return_state``)."""
    ref = reference_train(case, steps)
    return (ref.preds, ref.params) if return_state else ref.preds


def relative_errors(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], init: dict[str, torch.Tensor] | None = None
) -> dict[str, float]:
    """Per tensor ||got - want|| / ||want|| (of the change from ``init`` when given); 0 when both are 0, inf
    when only ``want`` is."""
    out: dict[str, float] = {}
    for key in want:
        w, g = (want[key], got[key]) if init is None else (want[key] - init[key], got[key] - init[key])
        w, g = w.double(), g.double()
        err = float((g - w).norm())
        out[key] = err / float(w.norm()) if w.norm() > 0 else (0.0 if err == 0 else float("inf"))
    return out


def assert_updates_close(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], init: dict[str, torch.Tensor], max_rel_err: float
) -> None:
    """Per parameter, ||Δgot - Δwant|| / ||Δwant|| over the change from init: a 2x or 0.5x update fails at once,
    however small the update is next to the weights (embedding rows move little per step)."""
    assert sorted(got) == sorted(want)
    bad = {k: e for k, e in relative_errors(got, want, init).items() if not e < max_rel_err}
    assert not bad, f"relative update errors above {max_rel_err:.0e}: {_fmt(bad)}"


def _fmt(errors: dict[str, float]) -> str:
    return ", ".join(f"{k} {e:.2e}" for k, e in sorted(errors.items(), key=lambda kv: -kv[1]))


def assert_predictions_close(
    got: dict[int, list[float]], want: dict[int, list[float]], atol: float, rtol: float = 0
) -> None:
    assert sorted(got) == sorted(want), "sharded evaluation must cover exactly the test examples"
    keys = sorted(want)
    torch.testing.assert_close(
        torch.tensor([got[k] for k in keys]), torch.tensor([want[k] for k in keys]), atol=atol, rtol=rtol
    )
