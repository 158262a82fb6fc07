"""DCP checkpoints across world sizes and sharding plans, with optimizer state, and plain export.

Saved on 2 ranks table-wise after 2 steps (Adagrad sparse state + Adam dense state), then loaded (a) on 1 rank,
(b) on 2 ranks column-wise, (c) into a plain unsharded model. Loaded predictions must equal the saved model's,
and one more step after loading must equal the uninterrupted run's next step (optimizer state came along).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ranking_case import LOCAL_BATCH, Case, assert_predictions_close, eval_predictions, train_batches

from framework.checkpoint.dcp import Checkpointer, load_model_state_plain
from framework.distributed.env import read_env
from framework.distributed.spawn import run_multiprocess
from framework.distributed.torchrec_sharding import shard_model
from framework.trainers.ranking import TrainState, checkpoint_state, restore, train_step

CASE = Case(formulation="hybrid", sparse="adagrad", dense="adam")
SAVED_STEPS = 2


def _sharded(case: Case, sharding_type: str):
    env = read_env("cpu")
    data = case.data()
    sm = shard_model(case.model(data), tables=data.num_embeddings, embedding_dim=16, sharding_type=sharding_type,
                     optim=case.optim(), env=env)  # fmt: skip
    sm.optimizer.init_state()
    return env, data, sm


def _save_then_continue(ckpt_root: str) -> dict:
    env, data, sm = _sharded(CASE, "table_wise")
    state = TrainState()
    for step in range(SAVED_STEPS):
        train_step(sm, train_batches(data, step, env.rank, env.world_size))
        state.step, state.examples_in_epoch = step + 1, (step + 1) * 2 * LOCAL_BATCH
    path = Checkpointer(ckpt_root, rank=env.rank).save(state.step, checkpoint_state(sm, state), {"note": "test"})
    at_save = eval_predictions(sm.model, data, env.rank, env.world_size)
    train_step(sm, train_batches(data, SAVED_STEPS, env.rank, env.world_size))
    return {"path": str(path), "at_save": at_save, "next": eval_predictions(sm.model, data, env.rank, env.world_size)}


def _load_then_continue(ckpt_path: str, sharding_type: str) -> dict:
    env, data, sm = _sharded(CASE, sharding_type)
    before = eval_predictions(sm.model, data, env.rank, env.world_size)
    state = TrainState()
    restore(Path(ckpt_path), sm, state)
    loaded = eval_predictions(sm.model, data, env.rank, env.world_size)
    train_step(sm, train_batches(data, state.step, env.rank, env.world_size))
    return {
        "state": state,
        "before": before,
        "loaded": loaded,
        "next": eval_predictions(sm.model, data, env.rank, env.world_size),
    }


def _merge(results: list[dict], key: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in results:
        out.update(r[key])
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ckpt")
    results = run_multiprocess(_save_then_continue, 2, str(root))
    return {"path": results[0]["path"], "at_save": _merge(results, "at_save"), "next": _merge(results, "next")}


@pytest.mark.parametrize(("world_size", "sharding_type"), [(1, "table_wise"), (2, "column_wise")])
def test_resume_at_other_world_size_or_plan(saved: dict, world_size: int, sharding_type: str) -> None:
    results = run_multiprocess(_load_then_continue, world_size, saved["path"], sharding_type)
    assert results[0]["state"] == TrainState(step=SAVED_STEPS, epoch=0, examples_in_epoch=SAVED_STEPS * 2 * LOCAL_BATCH)
    before, loaded = _merge(results, "before"), _merge(results, "loaded")
    # Loading matters: a fresh model predicts differently.
    assert max(abs(a - b) for k in before for a, b in zip(before[k], saved["at_save"][k], strict=True)) > 1e-3
    assert_predictions_close(loaded, saved["at_save"], atol=1e-6)
    # Optimizer state (Adagrad sums, Adam moments and step) resumed too: the next step matches. Reduction order
    # differs between plans and world sizes (fp32), hence 1e-4 rather than bitwise.
    assert_predictions_close(_merge(results, "next"), saved["next"], atol=1e-4)


def test_load_into_plain_unsharded_model(saved: dict) -> None:
    data = CASE.data()
    model = CASE.model(data)
    load_model_state_plain(saved["path"], model)
    assert_predictions_close(eval_predictions(model, data, 0, 1), saved["at_save"], atol=1e-6)
    # The same weights drive the plain nn.EmbeddingBag backend (state dicts are interchangeable).
    plain = CASE.model(data, embedding_backend="torch")
    plain.load_state_dict(model.state_dict())
    assert_predictions_close(eval_predictions(plain, data, 0, 1), saved["at_save"], atol=1e-6)


def test_incomplete_checkpoint_is_never_loaded(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path)
    (tmp_path / "step_00000005.partial").mkdir(parents=True)  # what a crash during save leaves
    assert ckpt.latest() is None
    with pytest.raises(FileNotFoundError, match="interrupted save"):
        Checkpointer.load(tmp_path / "step_00000005.partial", {"x": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="meta.json"):
        Checkpointer.read_meta(tmp_path / "step_00000005.partial")
