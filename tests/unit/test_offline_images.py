"""Offline demo image sets: deterministic by seed, captions true to the pixels, the folder layout that is written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from framework.data.clip.offline_images import (
    COLORS,
    DIGIT_NAMES,
    PHOTO_CAPTIONS,
    SHAPES,
    build_demo_dataset,
    digit_samples,
    digits_images,
    draw_shape,
    photo_samples,
    render_shapes,
    shape_samples,
)
from framework.data.clip.shards import read_captions, write_shards
from framework.evaluation.clip_eval import load_labeled_root

SIZE = 64


def _words(caption: str) -> set[str]:
    return set(re.findall(r"[a-z]+", caption))


def _nearest_color(rgb: np.ndarray) -> str:
    return min(COLORS, key=lambda c: float(((np.array(COLORS[c]) - rgb) ** 2).sum()))


def _patch_mean(img: Image.Image, cx: float, cy: float, half: int = 1) -> np.ndarray:
    x, y = round(cx), round(cy)
    return np.asarray(img, dtype=np.float64)[y - half : y + half + 1, x - half : x + half + 1].reshape(-1, 3).mean(0)


def _pixels(samples: list) -> list[np.ndarray]:
    return [np.asarray(s.image) for s in samples]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shapes_deterministic_by_seed() -> None:
    a, b, c = shape_samples(6, seed=3), shape_samples(6, seed=3), shape_samples(6, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(_pixels(a), _pixels(b), strict=True))
    assert [s.caption for s in a] == [s.caption for s in b] and [s.meta for s in a] == [s.meta for s in b]
    assert not all(np.array_equal(x, y) for x, y in zip(_pixels(a), _pixels(c), strict=True))
    assert all(s.image.size == (SIZE, SIZE) and s.image.mode == "RGB" for s in a)


def test_shape_captions_match_the_drawn_pixels(tmp_path: Path) -> None:
    samples = render_shapes(tmp_path, 40, seed=0, progress=False)
    rows = _read_jsonl(tmp_path / "labels.jsonl")
    assert len(rows) == 40 and len(list((tmp_path / "images").glob("*.jpg"))) == 40
    region = {  # where the stated position puts the centre, as a fraction of the side
        "left": lambda x, y: x < 0.4 and 0.4 <= y <= 0.6,
        "right": lambda x, y: x > 0.6 and 0.4 <= y <= 0.6,
        "top": lambda x, y: y < 0.4 and 0.4 <= x <= 0.6,
        "bottom": lambda x, y: y > 0.6 and 0.4 <= x <= 0.6,
        "center": lambda x, y: 0.4 <= x <= 0.6 and 0.4 <= y <= 0.6,
    }
    for s, row in zip(samples, rows, strict=True):
        lab, cx, cy = s.labels, s.meta["cx"], s.meta["cy"]
        assert row["caption"] == s.caption and row["labels"] == lab
        words = _words(s.caption)
        assert {lab["shape"], lab["color"], lab["size"], lab["position"]} <= words, s.caption
        assert region[lab["position"]](cx / SIZE, cy / SIZE), (lab, cx, cy)
        # The shape's centre pixels are nearest to the stated colour, before and after JPEG; the corner is the
        # background: light grey (every palette colour has a channel <= 60, the background none below 170).
        for img in (s.image, Image.open(tmp_path / "images" / row["image"]).convert("RGB")):
            assert _nearest_color(_patch_mean(img, cx, cy)) == lab["color"], (s.caption, _patch_mean(img, cx, cy))
            assert _patch_mean(img, 1.5, 1.5).min() > 150
    assert len({s.labels["color"] for s in samples}) == len(COLORS)
    assert len({s.labels["shape"] for s in samples}) == len(SHAPES)


def test_draw_shape_fixed_attributes_and_errors() -> None:
    s = draw_shape(np.random.default_rng(0), SIZE, shape="star", color="purple", position="right", scale="large")
    assert s.labels == {"shape": "star", "color": "purple", "position": "right", "size": "large"}
    assert _nearest_color(_patch_mean(s.image, s.meta["cx"], s.meta["cy"])) == "purple"
    with pytest.raises(ValueError, match="unknown color 'pink'"):
        draw_shape(np.random.default_rng(0), SIZE, color="pink")


def test_digits_captions_name_the_scan_and_style_shows(tmp_path: Path) -> None:
    targets = load_digits().target
    samples = digits_images(tmp_path, 24, seed=1, progress=False)
    again = digit_samples(24, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(_pixels(samples), _pixels(again), strict=True))
    for s in samples:
        name = DIGIT_NAMES[targets[s.meta["index"]]]
        assert s.labels["digit"] == name and name in _words(s.caption)
        # Paper dominates the canvas: dark ink on light paper averages bright, the inverted style dark.
        mean = np.asarray(s.image).mean()
        assert mean > 128 if s.labels["style"] == "dark_on_light" else mean < 128
        assert ("white" in s.caption) == (s.labels["style"] == "light_on_dark")
    assert [r["meta"]["index"] for r in _read_jsonl(tmp_path / "labels.jsonl")] == [s.meta["index"] for s in samples]


def test_photo_crops_caption_their_source() -> None:
    samples = photo_samples(12, seed=0)
    assert {s.meta["source"] for s in samples} == {"china.jpg", "flower.jpg"}
    for s in samples:
        assert s.caption in PHOTO_CAPTIONS[s.meta["source"]] and s.image.size == (SIZE, SIZE)
    assert [s.caption for s in samples] == [s.caption for s in photo_samples(12, seed=0)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_demo_dataset(tmp_path_factory.mktemp("demo"), 30, 12, seed=0, zeroshot_per_class=2, progress=False)


def test_build_demo_dataset_layout(demo: dict[str, Path]) -> None:
    root = demo["root"]
    train = read_captions(demo["train_captions"], demo["train_images"])
    val = read_captions(demo["val_captions"], demo["val_images"])
    assert len(train) == 30 and len(val) == 12 and all(r.image.is_file() for r in train + val)
    assert demo["train_images"] == root / "train" / "images" and demo["val_captions"] == root / "val" / "captions.tsv"
    manifest = json.loads(demo["manifest"].read_text())
    assert manifest["counts"]["train"] == {"shapes": 15, "digits": 12, "photos": 3}
    assert manifest["counts"]["val"] == {"shapes": 6, "digits": 5, "photos": 1}
    families = [r["family"] for r in _read_jsonl(demo["train_labels"])]
    assert families.count("shapes") == 15 and families != sorted(families)  # interleaved, not in blocks

    classnames = json.loads(demo["classnames"].read_text())
    assert classnames == {"shapes": list(SHAPES), "colors": list(COLORS), "digits": list(DIGIT_NAMES)}
    templates = json.loads(demo["templates"].read_text())
    assert set(templates) == set(classnames) and all("{}" in t for ts in templates.values() for t in ts)
    for family, names in classnames.items():
        folders = sorted(p.name for p in (demo["zeroshot"] / family).iterdir())
        assert folders == sorted(names)
        assert all(len(list((demo["zeroshot"] / family / n).glob("*.jpg"))) == 2 for n in names)
    # Digit folders hold scans of that digit; the class order of classnames.json is the label order.
    targets = load_digits().target
    zs_rows = _read_jsonl(demo["zeroshot_labels"])
    assert all(DIGIT_NAMES[targets[r["meta"]["index"]]] == r["class"] for r in zs_rows if r["family"] == "digits")
    datasets = load_labeled_root(demo["zeroshot"])
    assert datasets["digits"].class_names == list(DIGIT_NAMES) and len(datasets["colors"]) == 2 * len(COLORS)


def test_demo_splits_share_no_digit_scan(demo: dict[str, Path]) -> None:
    def scans(path: Path) -> set[int]:
        return {r["meta"]["index"] for r in _read_jsonl(path) if r["family"] == "digits"}

    train, val, zs = scans(demo["train_labels"]), scans(demo["val_labels"]), scans(demo["zeroshot_labels"])
    assert len(zs) == 20 and len(val) == 5 and train
    assert not (train & val) and not (train & zs) and not (val & zs)


def test_demo_dataset_is_deterministic_and_guarded(demo: dict[str, Path], tmp_path: Path) -> None:
    again = build_demo_dataset(tmp_path / "a", 30, 12, seed=0, zeroshot_per_class=2, progress=False)
    for key in ("train_captions", "val_captions", "train_labels", "zeroshot_labels"):
        assert again[key].read_bytes() == demo[key].read_bytes(), key
    first = sorted(demo["train_images"].iterdir())[:3] + sorted((demo["zeroshot"] / "digits" / "seven").iterdir())
    for p in first:
        assert (again["root"] / p.relative_to(demo["root"])).read_bytes() == p.read_bytes(), p
    other = build_demo_dataset(tmp_path / "b", 30, 12, seed=1, zeroshot_per_class=2, progress=False)
    assert other["train_captions"].read_bytes() != demo["train_captions"].read_bytes()

    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_demo_dataset(tmp_path / "a", 4, 2, seed=0, zeroshot_per_class=1, progress=False)
    build_demo_dataset(tmp_path / "a", 4, 2, seed=0, zeroshot_per_class=1, overwrite=True, progress=False)
    assert len(read_captions(tmp_path / "a" / "train" / "captions.tsv", tmp_path / "a" / "train" / "images")) == 4
    with pytest.raises(ValueError, match="exceeds the .* scans of digit"):
        build_demo_dataset(tmp_path / "c", 4, 2, seed=0, zeroshot_per_class=500, progress=False)


def test_demo_train_split_makes_shards(demo: dict[str, Path], tmp_path: Path) -> None:
    shards = write_shards(demo["train_images"], demo["train_captions"], tmp_path / "shards", samples_per_shard=16,
                          progress=False)  # fmt: skip
    assert [s.name for s in shards] == ["00000.tar", "00001.tar"]
