"""CLIP evaluation suite: image folders, embedding, prompt ensembles, linear probe, pair metrics, plot, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from framework.data.clip.image_ops import CLIP_MEAN, CLIP_STD, decode_image, preprocess
from framework.data.clip.offline_images import COLORS, build_demo_dataset
from framework.data.clip.shards import read_captions
from framework.data.clip.tokenizer import ByteTokenizer
from framework.data.errors import DataFormatError
from framework.evaluation.clip_eval import (
    ImageFolderDataset,
    embed_images,
    embed_texts,
    evaluate_clip,
    format_eval_table,
    linear_probe,
    load_labeled_root,
    pair_metrics,
    plot_modality_gap,
    unique_caption_indices,
    zero_shot_classifier,
    zero_shot_eval,
    zero_shot_scores,
)
from framework.models.clip.model import CLIP, tiny_clip_config

S = 32  # tiny_clip_config image size


@pytest.fixture(scope="module")
def tiny() -> tuple[CLIP, ByteTokenizer]:
    torch.manual_seed(0)
    return CLIP(tiny_clip_config(vocab_size=ByteTokenizer.vocab_size, context_length=48)), ByteTokenizer(48)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_demo_dataset(tmp_path_factory.mktemp("demo"), 8, 16, seed=0, zeroshot_per_class=3, progress=False)


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(path)


def test_image_folder_dataset_classes_labels_and_errors(tmp_path: Path) -> None:
    _png(tmp_path / "b_cls" / "x.png", 10)
    _png(tmp_path / "a_cls" / "z.png", 20)
    _png(tmp_path / "a_cls" / "y.png", 30)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "a_cls" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path)
    assert ds.class_names == ["a cls", "b cls"] and ds.folders == ["a_cls", "b_cls"]
    assert [p.name for p in ds.paths] == ["y.png", "z.png", "x.png"] and ds.labels.tolist() == [0, 0, 1]
    img, label = ds[2]
    assert img.mode == "RGB" and img.size == (12, 10) and label == 1
    ordered = ImageFolderDataset(tmp_path, classes=["b cls", "a cls"])
    assert ordered.class_names == ["b cls", "a cls"] and ordered.labels.tolist() == [0, 1, 1]
    assert [p.name for p in ordered.paths] == ["x.png", "y.png", "z.png"]
    with pytest.raises(ValueError, match="missing \\['c_cls'\\]"):
        ImageFolderDataset(tmp_path, classes=["a cls", "b cls", "c cls"])
    with pytest.raises(ValueError, match="too few in .*b_cls"):
        ds.split(0.5, seed=0)
    (tmp_path / "empty_cls").mkdir()
    with pytest.raises(ValueError, match="empty_cls has no images"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolderDataset(tmp_path / "nope")


def test_load_labeled_root_layouts(tmp_path: Path) -> None:
    for family in ("fam1", "fam2"):
        for cls in ("u", "v"):
            _png(tmp_path / "multi" / family / cls / "0.png", 0)
    _png(tmp_path / "single" / "u" / "0.png", 0)
    assert list(load_labeled_root(tmp_path / "multi")) == ["fam1", "fam2"]
    assert list(load_labeled_root(tmp_path / "single")) == ["single"]
    _png(tmp_path / "multi" / "stray" / "0.png", 0)
    with pytest.raises(ValueError, match="mixes family folders with class folders .*stray"):
        load_labeled_root(tmp_path / "multi")


def test_embed_images_accepts_paths_pil_and_tensors(
    tiny: tuple[CLIP, ByteTokenizer], demo: dict[str, Path], tmp_path: Path
) -> None:
    model, _ = tiny
    paths = sorted(demo["val_images"].glob("*.jpg"))[:5]
    pils = [decode_image(p.read_bytes(), S) for p in paths]  # files are decoded as the training loader does
    tensors = [preprocess(im, S) for im in pils]
    model.train()
    running_mean = model.visual.stem[1].running_mean.clone()
    ref = embed_images(model, paths, S, batch_size=2, progress=False)
    assert model.training and torch.equal(model.visual.stem[1].running_mean, running_mean)  # eval mode, restored
    assert ref.shape == (5, model.cfg.embed_dim) and ref.dtype == torch.float32
    torch.testing.assert_close(ref.norm(dim=1), torch.ones(5))
    # An untrained tower maps images close together (pairwise ~1e-3), so compare far tighter than that; batch size
    # only changes float summation order (~1e-7).
    assert torch.cdist(ref, ref).add(torch.eye(5)).min() > 1e-4
    for other in (pils, tensors, torch.stack(tensors), [paths[0], pils[1], *tensors[2:]]):
        torch.testing.assert_close(embed_images(model, other, S, progress=False), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(embed_images(model, paths[::-1], S, progress=False), ref.flip(0), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="image 1: tensor of shape \\(3, 16, 16\\)"):
        embed_images(model, [tensors[0], torch.zeros(3, 16, 16)], S, progress=False)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataFormatError, match="corrupt.jpg"):
        embed_images(model, [bad], S, progress=False)


def test_zero_shot_classifier_is_the_renormalized_template_mean(tiny: tuple[CLIP, ByteTokenizer]) -> None:
    model, tok = tiny
    names, templates = ["red circle", "digit seven"], ["a photo of a {}.", "a drawing of a {}.", "{}"]
    got = zero_shot_classifier(model, tok, names, templates)
    model.eval()
    with torch.no_grad():
        manual = []
        for name in names:
            batch = tok([t.format(name) for t in templates])
            emb = model.encode_text(batch.tokens_BL, batch.eot_index_B)  # already unit norm
            manual.append(F.normalize(emb.mean(0), dim=0))
    torch.testing.assert_close(got, torch.stack(manual))
    # One template: the class embedding is that prompt's embedding itself.
    single = zero_shot_classifier(model, tok, names, ["a photo of a {}."])
    torch.testing.assert_close(single, embed_texts(model, tok, [f"a photo of a {n}." for n in names], progress=False))
    with pytest.raises(ValueError, match="exactly once"):
        zero_shot_classifier(model, tok, names, ["no placeholder"])


def test_zero_shot_scores_by_hand_with_k_capped() -> None:
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    imgs = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # img0 (label 0) is right at top-1; img1 (label 1) is 2nd of 2. k = 3, 5 exceed C = 2: read as top-2.
    out = zero_shot_scores(imgs, classes, torch.tensor([0, 1]), ks=(1, 3, 5))
    assert out == {"top1": 0.5, "top3": 1.0, "top5": 1.0, "num_classes": 2, "num_images": 2}
    with pytest.raises(ValueError, match="labels must be in \\[0, 2\\)"):
        zero_shot_scores(imgs, classes, torch.tensor([0, 2]))


def test_zero_shot_eval_end_to_end(tiny: tuple[CLIP, ByteTokenizer], demo: dict[str, Path]) -> None:
    model, tok = tiny
    for family, ds in load_labeled_root(demo["zeroshot"]).items():
        out = zero_shot_eval(model, tok, ds, S, progress=False)
        c = len(ds.class_names)
        assert out["num_classes"] == c and out["num_images"] == 3 * c and out["num_templates"] == 4, family
        assert 0.0 <= out["top1"] <= out["top3"] <= out["top5"] <= 1.0
        if c <= 5:  # k >= C: every label is within the top k
            assert out["top5"] == 1.0


class ColorOracle(torch.nn.Module):
    """A hand-written dual encoder that sees only colour: one-hot over the demo palette for both towers.

    Image: the palette colour nearest to the mean of the saturated pixels (the shape; the background is grey).
    Text: the palette colour word in the decoded caption. Zero-shot on the demo ``colors`` folder must be perfect.
    """

    def __init__(self, tokenizer: ByteTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.palette_C3 = torch.tensor(list(COLORS.values()), dtype=torch.float32)

    def encode_image(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        rgb = images_BCHW * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        out = []
        for img in rgb.mul(255).flatten(2).transpose(1, 2):  # [HW, 3] per image
            saturated = img[(img.amax(1) - img.amin(1)) > 100]
            out.append(F.one_hot(torch.cdist(saturated.mean(0, keepdim=True), self.palette_C3).argmin(), len(COLORS)))
        return torch.stack(out).float()

    def encode_text(self, tokens_BL: torch.Tensor, eot_index_B: torch.Tensor) -> torch.Tensor:
        names = list(COLORS)
        idx = [next(i for i, c in enumerate(names) if c in self.tokenizer.decode(row.tolist())) for row in tokens_BL]
        return F.one_hot(torch.tensor(idx), len(names)).float()


def test_zero_shot_and_probe_are_perfect_for_a_colour_oracle(demo: dict[str, Path], tmp_path: Path) -> None:
    tok = ByteTokenizer(48)
    colors = load_labeled_root(demo["zeroshot"])["colors"]
    out = zero_shot_eval(ColorOracle(tok), tok, colors, S, templates=["a {} shape."], progress=False)
    assert out["top1"] == 1.0 and out["num_images"] == 3 * len(COLORS)
    res = evaluate_clip(ColorOracle(tok), tok, S, out_dir=tmp_path, zeroshot_root=colors.root,
                        templates={"colors": ["a {} shape."]}, probe_root=colors.root, progress=False)  # fmt: skip
    assert res["zero_shot"]["colors"]["top1"] == 1.0 and res["linear_probe"]["colors"]["accuracy"] == 1.0


def test_linear_probe_separable_vs_random_labels() -> None:
    rng = np.random.default_rng(0)
    centers = np.eye(16)[:4] * 3.0
    y_tr, y_te = rng.integers(0, 4, 200), rng.integers(0, 4, 400)
    x_tr = centers[y_tr] + 0.3 * rng.standard_normal((200, 16))
    x_te = centers[y_te] + 0.3 * rng.standard_normal((400, 16))
    sep = linear_probe(x_tr, y_tr, x_te, y_te, seed=0)
    assert sep["accuracy"] >= 0.97 and sep["C"] in (0.01, 0.1, 1.0, 10.0) and sep["num_classes"] == 4
    # Labels independent of the features: test accuracy near chance (1/4; sd ~0.02 over 400 test items).
    noise = linear_probe(torch.randn(200, 16), torch.from_numpy(y_tr), torch.randn(400, 16), y_te, C=1.0)
    assert 0.15 <= noise["accuracy"] <= 0.35 and noise["C"] == 1.0 and noise["val_accuracy"] is None
    with pytest.raises(ValueError, match=">= 2 classes"):
        linear_probe(x_tr, np.zeros(200), x_te, y_te)


def test_pair_metrics_identical_embeddings() -> None:
    emb = F.normalize(torch.randn(20, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    out = pair_metrics(emb, emb)
    for k in (1, 5, 10):
        assert out[f"image_to_text/R@{k}"] == 1.0 and out[f"text_to_image/R@{k}"] == 1.0
    assert out["modality_gap"] == pytest.approx(0.0, abs=1e-12) and out["alignment"] == pytest.approx(1.0)
    assert math.isfinite(out["s_u_eq412"]) and out["num_pairs"] == 20
    assert out["uniformity_image"] == out["uniformity_text"] < 0.0


def test_unique_caption_indices() -> None:
    assert unique_caption_indices(["A cat", "a  cat ", "dog", "a cat", "Dog"]) == [0, 2]


def test_plot_modality_gap_writes_png(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(50, 16, generator=g) + 2.0, dim=1)
    txt = F.normalize(img + 0.5 * torch.randn(50, 16, generator=g) - 1.0, dim=1)
    path = plot_modality_gap(img, txt, tmp_path / "sub" / "gap.png", title="test")
    assert path.stat().st_size > 10_000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 800 and im.size[1] > 300
    with pytest.raises(ValueError, match=">= 2 pairs"):
        plot_modality_gap(img[:1], txt[:1], tmp_path / "x.png")


def test_format_eval_table_contains_the_numbers() -> None:
    clip = {
        "name": "CLIP",
        "zero_shot": {"shapes": {"top1": 0.1234, "top3": 0.5, "top5": 1.0, "num_classes": 5}},
        "linear_probe": {"shapes": {"accuracy": 0.8}, "digits": {"accuracy": 0.6}},
        "pairs": {"image_to_text/R@1": 0.25, "text_to_image/R@1": 0.125, "image_to_text/R@5": 0.75,
                  "alignment": 0.31416, "s_u_eq412": -0.5, "uniformity_image": -1.25, "uniformity_text": -2.5,
                  "modality_gap": 0.9876, "num_pairs": 40},
    }  # fmt: skip
    rank = {"name": "RankCLIP", "zero_shot": {"shapes": {"top1": 0.4321, "top3": 0.6, "top5": 1.0, "num_classes": 5}},
            "linear_probe": {"shapes": {"accuracy": 0.9}}}  # fmt: skip
    table = format_eval_table([clip, rank])
    lines = table.splitlines()
    clip_lines = [ln for ln in lines if ln.startswith("CLIP ")]
    rank_lines = [ln for ln in lines if ln.startswith("RankCLIP")]
    assert len(clip_lines) == 4 and len(rank_lines) == 4  # zero-shot, probe, retrieval, geometry
    assert clip_lines[0].split()[1:] == ["12.34", "50.00", "100.00*"] and "trivially 100%" in table
    assert clip_lines[1].split()[1:] == ["80.00", "60.00", "70.00"]  # shapes, digits, mean
    assert rank_lines[1].split()[1:] == ["90.00", "-", "-"]  # no digits probe → no mean
    assert clip_lines[2].split()[1:] == ["25.00", "75.00", "12.50"]  # i2t R@1, i2t R@5, t2i R@1
    assert clip_lines[3].split()[1:] == ["0.3142", "-0.5000", "-1.2500", "-2.5000", "0.9876", "40"]
    assert rank_lines[3].split()[1:] == ["-", "-", "-", "-", "-", "-"]
    assert "S_U (eq. 4.12, up: mismatched apart)" in table and "unif img (W&I, down)" in table
    # Results written before the rename keep S_U (eq. 4.12) under "uniformity".
    old = {"name": "old", "pairs": {"alignment": 0.5, "uniformity": 0.041, "modality_gap": 0.09, "num_pairs": 8}}
    old_line = next(ln for ln in format_eval_table([old]).splitlines() if ln.startswith("old "))
    assert old_line.split()[1:] == ["0.5000", "0.0410", "-", "-", "0.0900", "8"]
    with pytest.raises(ValueError, match="no rows"):
        format_eval_table([])


def test_evaluate_clip_end_to_end(tiny: tuple[CLIP, ByteTokenizer], demo: dict[str, Path], tmp_path: Path) -> None:
    model, tok = tiny
    rows = read_captions(demo["val_captions"], demo["val_images"])
    images, captions = [Image.open(r.image).convert("RGB") for r in rows], [r.caption for r in rows]
    captions[1] = captions[0]  # a duplicate caption: scored once in retrieval
    res = evaluate_clip(model, tok, S, out_dir=tmp_path / "eval", name="CLIP", pairs=(images, captions),
                        zeroshot_root=demo["zeroshot"], probe_root=demo["zeroshot"], progress=False)  # fmt: skip
    assert set(res["zero_shot"]) == set(res["linear_probe"]) == {"shapes", "colors", "digits"}
    for fam in res["zero_shot"].values():
        assert all(0.0 <= fam[k] <= 1.0 for k in ("top1", "top3", "top5"))
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["num_test"] > 0 for p in res["linear_probe"].values())
    pairs = res["pairs"]
    assert pairs["num_pairs"] == 16 and pairs["retrieval_num_pairs"] <= 15
    assert all(0.0 <= pairs[f"{d}/R@{k}"] <= 1.0 for d in ("image_to_text", "text_to_image") for k in (1, 5, 10))
    assert -1.0 <= pairs["alignment"] <= 1.0 and pairs["modality_gap"] >= 0.0
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["zero_shot"] == res["zero_shot"] and saved["summary"] == res["summary"]
    assert Path(res["plot"]).is_file() and Path(res["plot"]).stat().st_size > 0
    assert "CLIP" in format_eval_table([res])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_clip(model, tok, S, out_dir=tmp_path / "none")
    with pytest.raises(ValueError, match="16 images but 15 captions"):
        evaluate_clip(model, tok, S, out_dir=tmp_path / "bad", pairs=(images, captions[:-1]), progress=False)
