"""The indexed scene-world training set: tokenization per stage, and a sample order that depends on (seed, step)
only, so any split of the global batch over ranks and micro-batches trains on the same samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.data.lvlm.chat import IGNORE
from framework.data.lvlm.dataset import load_train_set, micro_rows, step_rows
from framework.data.lvlm.scenes import build_scene_world
from framework.data.lvlm.tokenizer import scene_tokenizer


def test_steps_walk_seeded_epochs_covering_every_kept_sample_once() -> None:
    kept = list(range(0, 40, 2))  # 20 kept samples of 40
    rows = [r for s in range(5) for r in step_rows(kept, s, 8, seed=3)]  # 40 positions = 2 epochs
    assert sorted(rows[:20]) == kept and sorted(rows[20:]) == kept
    assert rows[:20] != rows[20:] and rows[:20] != kept  # shuffled, and differently per epoch
    assert step_rows(kept, 2, 8, seed=3) == rows[16:24]  # a step's rows depend on (seed, step) only
    assert step_rows(kept, 2, 8, seed=4) != rows[16:24]


@pytest.mark.parametrize(("world", "accum"), [(1, 1), (2, 1), (2, 2), (4, 1)])
def test_ranks_and_micro_batches_partition_the_step(world: int, accum: int) -> None:
    rows = step_rows(list(range(50)), 1, 16, seed=0)
    B = 16 // world // accum
    parts = [micro_rows(rows, m, r, world, B) for m in range(accum) for r in range(world)]
    assert all(len(p) == B for p in parts)
    assert [x for p in parts for x in p] == rows


def test_stages_tokenize_first_exchange_or_whole_conversation(tmp_path: Path) -> None:
    build_scene_world(tmp_path, 6, 2, seed=0, progress=False)
    tok = scene_tokenizer()
    pre = load_train_set(tmp_path, tok, image_size=32, image_tokens=16, max_length=256, turns="description")
    ins = load_train_set(tmp_path, tok, image_size=32, image_tokens=16, max_length=256, turns="all")
    assert len(pre) == len(ins) == 6 and pre.pixels_NCHW.shape == (6, 3, 32, 32)
    eos = tok.eos_token_id
    for i in range(6):
        assert pre.labels[i].count(eos) == 1 and ins.labels[i].count(eos) == 3  # caption + 2 QA answers
        assert ins.input_ids[i][: len(pre.input_ids[i])] == pre.input_ids[i]
        assert pre.supervised_tokens([i]) == sum(t != IGNORE for t in pre.labels[i])
    batch = ins.batch([4, 1], tok.pad_token_id)
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["input_ids"].shape[0] == 2
    with pytest.raises(ValueError, match=r"sample train0000000: .*max_length 40.*data.max_length"):
        load_train_set(tmp_path, tok, image_size=32, image_tokens=16, max_length=40, turns="all")


def test_shuffled_turns_reorder_exchanges_and_move_the_image(tmp_path: Path) -> None:
    build_scene_world(tmp_path, 12, 2, seed=0, progress=False)
    tok = scene_tokenizer()
    args = dict(image_size=32, image_tokens=16, max_length=256)
    plain = load_train_set(tmp_path, tok, turns="all", **args)
    shuf = load_train_set(tmp_path, tok, turns="shuffled", **args)
    assert shuf.labels == load_train_set(tmp_path, tok, turns="shuffled", **args).labels  # deterministic
    image_id = tok.convert_tokens_to_ids("<image>")
    firsts = set()
    for i in range(12):
        x, y = shuf.input_ids[i], shuf.labels[i]
        assert sorted(x) == sorted(plain.input_ids[i]) and sorted(y) == sorted(plain.labels[i])  # same turns
        start = x.index(image_id)
        assert x[start : start + 16] == [image_id] * 16 and x.count(image_id) == 16  # one image, first question
        assert all(t == IGNORE for t in y[: start + 16])
        firsts.add(tok.decode(x[start + 16 : start + 19]))
    assert len(firsts) > 1  # not always the description first
