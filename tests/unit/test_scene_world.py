"""The annotated scene world: deterministic by seed and prefix-stable, annotations match the pixels, the
co-occurrence bias is what the config says, its own captions score CHAIR exactly as built, shards and POPE files."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from framework.data.lvlm.dataset import read_split
from framework.data.lvlm.scenes import PARTNER, SceneWorldConfig, build_scene_world, render_scene, vocabulary
from framework.metrics.hallucination import chair


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scenes")
    return out, build_scene_world(out, 1500, 400, seed=3, samples_per_shard=500, progress=False)


def test_deterministic_and_prefix_stable() -> None:
    a_img, a = render_scene(5, "train", 17)
    b_img, b = render_scene(5, "train", 17)
    assert a.annotation() == b.annotation() and np.array_equal(np.asarray(a_img), np.asarray(b_img))
    assert render_scene(6, "train", 17)[1].annotation() != a.annotation()
    assert render_scene(5, "eval", 17)[1].annotation() != a.annotation()


def test_boxes_hold_the_drawn_objects_and_faint_ones_are_faint() -> None:
    contrast = {True: [], False: []}
    for i in range(150):
        image, scene = render_scene(0, "train", i)
        px = np.asarray(image).astype(float)
        bg = np.median(px.reshape(-1, 3), axis=0)
        for o in scene.objects:
            x0, y0, x1, y1 = (int(round(v)) for v in o.box)
            patch = px[y0:y1, x0:x1]
            contrast[o.faint].append(np.abs(patch - bg).sum(-1).max())
    assert contrast[True], "no faint object in 150 train scenes"
    assert min(contrast[False]) > 80  # every drawn object stands out inside its box
    assert np.median(contrast[True]) < 0.5 * np.median(contrast[False])


def test_co_occurrence_bias_train_vs_eval(world) -> None:
    _, manifest = world
    train, ev = manifest["stats"]["train"], manifest["stats"]["eval"]
    assert train["partner_rate"] > 0.85 and ev["partner_rate"] < 0.6
    assert train["faint"] > 0 and train["caption_only"] > 0 and ev["faint"] == ev["caption_only"] == 0


def test_own_captions_score_chair_exactly_as_built(world) -> None:
    """The world's captions against its annotations: eval captions name exactly the drawn objects (CHAIR 0,
    recall 1); a train caption hallucinates exactly when it names a caption-only (absent) object."""
    out, _ = world
    vocab = vocabulary()
    for split in ("train", "eval"):
        rows = read_split(out, split)
        captions = {r["annotation"]["id"]: r["caption"] for r in rows}
        truth = {r["annotation"]["id"]: [o["name"] for o in r["annotation"]["objects"]] for r in rows}
        res = chair(captions, truth, vocab)
        with_absent = sum(bool(r["annotation"]["caption_only"]) for r in rows)
        assert res["chair_s"] == pytest.approx(with_absent / len(rows))
        assert res["recall"] == 1.0
        for c, r in zip(res["per_caption"], rows, strict=True):
            assert c["hallucinated"] == r["annotation"]["caption_only"]
        if split == "eval":
            assert res["chair_s"] == 0.0 and json.loads((out / "eval" / "annotations.json").read_text()) == truth
        else:
            assert res["chair_s"] > 0.02


def test_shards_carry_llava_conversations(world) -> None:
    out, manifest = world
    assert manifest["shards"]["train"] == ["00000.tar", "00001.tar", "00002.tar"]
    rows = read_split(out, "train")
    with tarfile.open(out / "train" / "00000.tar") as tar:
        first = tar.extractfile("000000000.jpg").read()
    assert len(rows) == 1500 and first[:2] == b"\xff\xd8" and rows[0]["image"].size == (64, 64)
    for r in rows[:50]:
        conv = r["annotation"]["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and len(conv) == 6
        assert conv[0]["value"].startswith("<image>\n") and conv[1]["value"] == r["caption"]


def test_pope_sets_are_balanced_and_adversarial_negatives_are_partners(world) -> None:
    out, _ = world
    truth = json.loads((out / "eval" / "annotations.json").read_text())
    partner_share = {}
    for mode in ("random", "popular", "adversarial"):
        qs = [json.loads(line) for line in (out / "pope" / f"{mode}.jsonl").read_text().splitlines()]
        assert sum(q["label"] for q in qs) == sum(not q["label"] for q in qs) > 300
        assert all((q["object"] in truth[q["image"]]) == q["label"] for q in qs)
        assert all(q["question"] == f"Is there a {q['object']} in the image?" for q in qs)
        neg = [q for q in qs if not q["label"]]
        partner_share[mode] = np.mean([any(PARTNER.get(o) == q["object"] for o in truth[q["image"]]) for q in neg])
    assert partner_share["adversarial"] > 2 * partner_share["random"], partner_share


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="pair_prob"):
        SceneWorldConfig(pair_prob=1.5)
    with pytest.raises(ValueError, match="split"):
        render_scene(0, "test", 0)


def test_make_scenes_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "launch.cli", "make-scenes", "--out", str(tmp_path), "--train", "60", "--eval", "20"]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "60 train / 20 eval scenes" in proc.stdout
    assert json.loads((tmp_path / "manifest.json").read_text())["counts"] == {"train": 60, "eval": 20}


def test_tokenizer_covers_the_world_without_unknowns() -> None:
    from framework.data.lvlm.tokenizer import SPECIALS, scene_tokenizer

    tok = scene_tokenizer()
    assert [tok.convert_tokens_to_ids(s) for s in SPECIALS] == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    n = 0
    for split in ("train", "eval"):
        for i in range(200):
            for turn in render_scene(1, split, i)[1].conversations:
                ids = tok(turn["value"], add_special_tokens=False)["input_ids"]
                assert tok.unk_token_id not in ids, turn["value"]
                n += len(ids)
    assert n > 10_000
    text = "<image>\nIs there a star in the image?"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == "<image> is there a star in the image ?"
    assert tok.unk_token_id in tok("a purple unicorn", add_special_tokens=False)["input_ids"]


def test_crowded_scenes_render_and_tokenize() -> None:
    """max_anchors=4 gives up to 8 objects (9 cells): every count has its word and the tokenizer knows it."""
    from framework.data.lvlm.tokenizer import scene_tokenizer

    tok = scene_tokenizer()
    cfg = SceneWorldConfig(max_anchors=4)
    sizes = set()
    for i in range(100):
        _, scene = render_scene(0, "train", i, cfg)
        sizes.add(len(scene.objects) + len(scene.caption_only))
        assert tok.unk_token_id not in tok(scene.caption, add_special_tokens=False)["input_ids"]
    assert max(sizes) >= 7
