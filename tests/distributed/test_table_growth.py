"""Warm start into grown tables (framework/checkpoint/grow.py): a table saved with 64 rows on 2 ranks table-wise is
loaded into a 100-row table, on 2 ranks column-wise and on 1 rank: the first 64 rows and their Adagrad sums are the
saved ones, rows 64..99 keep the new model's fresh initialization with zero sums, every other tensor (the user table,
the dense layers and Adam's moments) is the saved one. Then a step trains the grown model (its rows keep learning).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from ranking_case import DIM, Case, assemble, local_pieces, sharded_optimizer_state, train_batches

from framework.checkpoint.dcp import Checkpointer
from framework.checkpoint.grow import load_grown
from framework.distributed.env import read_env
from framework.distributed.spawn import run_multiprocess
from framework.distributed.torchrec_sharding import shard_model
from framework.trainers.ranking import TrainState, checkpoint_state, train_step

CASE = Case(formulation="hybrid", sparse="adagrad", dense="adam")
OLD_ITEMS, NEW_ITEMS = 64, 100  # the case's data hashes items into 64 rows


def _model(num_items: int):
    """The case's data (items hashed into 64 rows) and its model with ``num_items`` item rows."""
    data = CASE.data()
    tables = {**data.num_embeddings, "item": num_items}
    sized = SimpleNamespace(num_embeddings=tables, task_names=data.task_names)  # what Case.model reads
    return data, tables, CASE.model(sized)  # type: ignore[arg-type]


def _snapshot(sm) -> dict:
    return {"model": local_pieces(sm.model.state_dict()), "optim": local_pieces(sharded_optimizer_state(sm, CASE))}


def _train_and_save(root: str) -> dict:
    env = read_env("cpu")
    data, tables, model = _model(OLD_ITEMS)
    sm = shard_model(model, tables=tables, embedding_dim=DIM, sharding_type="table_wise", optim=CASE.optim(), env=env)
    sm.optimizer.init_state()
    for step in range(2):
        train_step(sm, train_batches(data, step, env.rank, env.world_size))
    path = Checkpointer(root, rank=env.rank).save(2, checkpoint_state(sm, TrainState(step=2)), {"note": "grow test"})
    return {"path": str(path), **_snapshot(sm)}


def _grow(path: str, sharding_type: str) -> dict:
    env = read_env("cpu")
    data, tables, model = _model(NEW_ITEMS)
    fresh = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sm = shard_model(model, tables=tables, embedding_dim=DIM, sharding_type=sharding_type, optim=CASE.optim(), env=env)
    sm.optimizer.init_state()
    app = checkpoint_state(sm, TrainState())
    grown = load_grown(path, app)
    sm.model.load_state_dict(app["model"])
    sm.optimizer.load_state_dict(app["optim"])
    out = {"grown": grown, "fresh": fresh if env.rank == 0 else None, **_snapshot(sm)}
    loss = train_step(sm, train_batches(data, 2, env.rank, env.world_size))
    out["loss"] = float(loss)
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict:
    results = run_multiprocess(_train_and_save, 2, str(tmp_path_factory.mktemp("grow")))
    return {
        "path": results[0]["path"],
        "model": assemble([r["model"] for r in results]),
        "optim": assemble([r["optim"] for r in results]),
    }


@pytest.mark.parametrize(("world_size", "sharding_type"), [(2, "column_wise"), (1, "table_wise")])
def test_grown_table_keeps_old_rows_and_optimizer_state(saved: dict, world_size: int, sharding_type: str) -> None:
    results = run_multiprocess(_grow, world_size, saved["path"], sharding_type)
    model = assemble([r["model"] for r in results])
    optim = assemble([r["optim"] for r in results])
    fresh = results[0]["fresh"]
    item_w = "sparse_arch.embeddings.item.weight"
    sums = f"{item_w}/sum"
    grown = results[0]["grown"]
    assert grown.pop(f"model.{item_w}") == (OLD_ITEMS, NEW_ITEMS)
    assert list(grown.values()) == [(OLD_ITEMS, NEW_ITEMS)]  # and the item table's Adagrad sums, on its owner
    assert model[item_w].shape == (NEW_ITEMS, DIM)
    torch.testing.assert_close(model[item_w][:OLD_ITEMS], saved["model"][item_w], rtol=0, atol=0)
    torch.testing.assert_close(model[item_w][OLD_ITEMS:], fresh[item_w][OLD_ITEMS:], rtol=0, atol=0)
    torch.testing.assert_close(optim[sums][:OLD_ITEMS], saved["optim"][sums], rtol=0, atol=0)
    assert saved["optim"][sums].abs().sum() > 0 and optim[sums][OLD_ITEMS:].abs().sum() == 0
    for key, value in saved["model"].items():
        if key != item_w:
            torch.testing.assert_close(model[key], value, rtol=0, atol=0, msg=key)
    for key, value in saved["optim"].items():
        if key != sums:
            torch.testing.assert_close(optim[key], value, rtol=0, atol=0, msg=key)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in results)


def test_shrinking_is_refused(saved: dict) -> None:
    with pytest.raises(ValueError, match=r"saved as \[64, 16\], cannot grow into \[32, 16\]"):
        load_grown(saved["path"], {"model": {"sparse_arch.embeddings.item.weight": torch.zeros(32, DIM)}})
