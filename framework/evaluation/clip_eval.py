"""CLIP / RankCLIP evaluation (thesis ch. 4): zero-shot top-k, linear probe, retrieval, alignment, S_U, uniformity,
modality gap.

Legend: N = images or pairs, C = classes, T = prompt templates, E = shared embedding dim.

The model is anything with ``encode_image(images_BCHW)`` and ``encode_text(tokens_BL, eot_index_B)`` returning
L2-normalized embeddings (:class:`framework.models.clip.CLIP`); the tokenizer returns a ``TokenBatch``
(:mod:`framework.data.clip.tokenizer`). Images are preprocessed as at eval time in training
(:func:`framework.data.clip.image_ops.preprocess` with ``train=False``: shorter side resized, centre crop, CLIP mean/std).
Embedding runs batched, without grad, in eval mode (BatchNorm running stats) on the model's device and dtype; the
model's train/eval mode is restored afterwards and features come back as float32 on the CPU.

The metric definitions live in :mod:`framework.metrics.clip`; this module adds the data plumbing (labeled image
folders, prompt ensembles), the logistic-regression probe, the modality-gap figure and the report table.

Example::

    from framework.data.clip.tokenizer import ByteTokenizer
    from framework.evaluation import evaluate_clip, format_eval_table

    res = evaluate_clip(model, ByteTokenizer(77), 224, out_dir="runs/eval/clip", name="CLIP",
                        zeroshot_root="demo/zeroshot", probe_root="demo/zeroshot", pairs=(images, captions))
    print(format_eval_table([res]))
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn
from tqdm import tqdm

from framework.data.clip.image_ops import decode_image, preprocess
from framework.data.clip.tokenizer import Tokenizer, clean_caption
from framework.data.errors import DataFormatError
from framework.metrics.clip import (
    alignment,
    modality_gap,
    retrieval_recall,
    s_u_eq412,
    wang_isola_uniformity,
    zero_shot_topk,
)

if TYPE_CHECKING:  # scikit-learn and matplotlib are imported where used: importing this module stays cheap
    from sklearn.pipeline import Pipeline

ImageLike = Image.Image | str | Path | torch.Tensor
"""A PIL image, an image file path, or an already preprocessed float tensor [3, S, S]."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a drawing of a {}.")
"""Prompt ensemble used when neither the caller nor the folder's ``templates.json`` gives one."""
DEFAULT_PROBE_C = (0.01, 0.1, 1.0, 10.0)
"""Inverse L2 strengths swept by :func:`linear_probe`; listed weakest-first so ties pick the simplest model."""


# ---------------------------------------------------------------------------------------------------- image folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.name[0] != "."
    )


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name[0] != ".")


def _load_image(path: str | Path, min_size: int | None = None) -> Image.Image:
    data = Path(path).read_bytes()  # FileNotFoundError names the path
    try:
        return decode_image(data, min_size)
    except (UnidentifiedImageError, OSError) as e:
        raise DataFormatError(f"cannot decode image {path}: {e}") from e


def stratified_split(
    labels: Sequence[int] | np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class shuffle split → (train indices, test indices), both sorted.

    Each class with n >= 2 items puts ``round(n * test_fraction)`` of them (at least 1, at most n - 1) in test; a
    class with one item stays in train.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(len(idx) * test_fraction)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class ImageFolderDataset(torch.utils.data.Dataset):
    """Labeled images laid out as ``root/<class_name>/*.{jpg,png,...}``.

    Class names are the folder names with underscores shown as spaces (``chinese_temple`` → ``chinese temple``);
    labels follow the sorted folder names unless ``classes`` gives the order. Items are ``(PIL image, label)``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: No class folders, an empty class folder (named), or folders that do not match ``classes``.
    """

    def __init__(self, root: str | Path, classes: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root} (expected {self.root}/<class>/*.jpg)")
        folders = [p.name for p in _subdirs(self.root)]
        if classes is not None:
            wanted = [c.replace(" ", "_") for c in classes]
            missing, extra = [w for w in wanted if w not in folders], sorted(set(folders) - set(wanted))
            if missing or extra or len(set(wanted)) != len(wanted):
                raise ValueError(
                    f"{self.root}: class folders do not match the class list (missing {missing}, unlisted {extra}, "
                    f"classes {list(classes)})"
                )
            folders = wanted
        if not folders:
            raise ValueError(f"{self.root}: no class subfolders (expected {self.root}/<class_name>/*.jpg)")
        self.folders: list[str] = folders
        """Folder name per label."""
        self.class_names: list[str] = [f.replace("_", " ") for f in folders]
        """Display name per label (used in prompts)."""
        self.samples: list[tuple[Path, int]] = []
        """``(image path, label)`` per item, grouped by class."""
        for label, folder in enumerate(folders):
            files = _image_files(self.root / folder)
            if not files:
                raise ValueError(f"class folder {self.root / folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            self.samples += [(p, label) for p in files]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        path, label = self.samples[i]
        return _load_image(path), label

    @property
    def paths(self) -> list[Path]:
        return [p for p, _ in self.samples]

    @property
    def labels(self) -> torch.Tensor:
        """int64 [N]."""
        return torch.tensor([lab for _, lab in self.samples], dtype=torch.long)

    def split(self, test_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Per-class seeded shuffle split of the item indices (see :func:`stratified_split`)."""
        counts = np.bincount(self.labels.numpy(), minlength=len(self.folders))
        small = [self.root / self.folders[c] for c in np.flatnonzero(counts < 2)]
        if small:
            raise ValueError(f"a train/test split needs >= 2 images per class; too few in {[str(p) for p in small]}")
        train, test = stratified_split(self.labels.numpy(), test_fraction, seed)
        return train, test


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: invalid JSON: {e}") from e


def load_labeled_root(root: str | Path) -> dict[str, ImageFolderDataset]:
    """Labeled datasets under ``root``, by family name.

    Two layouts: ``root/<class>/*.jpg`` is one dataset (family = ``root``'s name);
    ``root/<family>/<class>/*.jpg`` is one dataset per family (what ``build_demo_dataset`` writes). An optional
    ``root/classnames.json`` (``{family: [class, ...]}``, or a list for the one-dataset layout) fixes the label
    order; otherwise folders are sorted.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"labeled image root not found: {root}")
    subs = _subdirs(root)
    if not subs:
        raise ValueError(f"{root}: no subfolders (expected <class>/*.jpg or <family>/<class>/*.jpg)")
    holds_images = [bool(_image_files(s)) for s in subs]
    holds_dirs = [bool(_subdirs(s)) for s in subs]
    order_file = root / "classnames.json"
    order = _read_json(order_file) if order_file.is_file() else None
    if not any(holds_dirs):
        if order is not None and not isinstance(order, list):
            raise DataFormatError(f"{order_file}: expected a list of class names for a <class>/*.jpg layout")
        return {root.name: ImageFolderDataset(root, order)}
    if all(holds_dirs) and not any(holds_images):
        if order is not None and not isinstance(order, dict):
            raise DataFormatError(f"{order_file}: expected {{family: [class names]}} for a <family>/<class> layout")
        return {s.name: ImageFolderDataset(s, (order or {}).get(s.name)) for s in subs}
    mixed = [s.name for s, d in zip(subs, holds_dirs, strict=True) if not d]
    raise ValueError(f"{root}: mixes family folders with class folders (without subfolders: {mixed})")


def _templates_for(
    family: str, root: Path | None, templates: Mapping[str, Sequence[str]] | Sequence[str] | None
) -> tuple[str, ...]:
    """Caller's templates (one list for all families, or per family) > ``root/templates.json`` > defaults."""
    if isinstance(templates, Mapping):
        if family in templates:
            return tuple(templates[family])
    elif templates is not None:
        return tuple(templates)
    if root is not None and (root / "templates.json").is_file():
        from_file = _read_json(root / "templates.json")
        if not isinstance(from_file, dict):
            raise DataFormatError(f"{root / 'templates.json'}: expected {{family: [template, ...]}}")
        if family in from_file:
            return tuple(from_file[family])
    return DEFAULT_TEMPLATES


# ------------------------------------------------------------------------------------------------------- embedding


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device_dtype(model: nn.Module, device: torch.device | str | None) -> tuple[torch.device, torch.dtype]:
    param = next(iter(model.parameters()), None)
    dev = torch.device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    return dev, dtype


def _check_embedding(emb: torch.Tensor, batch: int, what: str) -> None:
    if emb.dim() != 2 or emb.shape[0] != batch:
        raise ValueError(f"model.{what} returned shape {tuple(emb.shape)} for a batch of {batch}; expected [B, E]")


def _to_input(x: ImageLike, image_size: int, index: int) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if tuple(x.shape) != (3, image_size, image_size):
            raise ValueError(
                f"image {index}: tensor of shape {tuple(x.shape)}; expected preprocessed [3, {image_size}, {image_size}]"
            )
        return x.float()
    if isinstance(x, Image.Image):
        return preprocess(x if x.mode == "RGB" else x.convert("RGB"), image_size)
    if isinstance(x, (str, Path)):
        return preprocess(_load_image(x, image_size), image_size)
    raise TypeError(f"image {index}: expected a PIL image, a path or a [3, S, S] tensor, got {type(x).__name__}")


def embed_images(
    model: nn.Module,
    images: Iterable[ImageLike] | torch.Tensor,
    image_size: int,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "embed images",
) -> torch.Tensor:
    """L2-normalized image embeddings, float32 [N, E] on the CPU.

    Args:
        images: PIL images, image paths, preprocessed [3, S, S] tensors (mixed is fine), or a [N, 3, S, S] tensor.
        image_size: Side S the model expects (``cfg.image_size``); PIL images and files are preprocessed to it.

    Files are decoded as the training loader decodes shard JPEGs (``decode_image(data, image_size)``: libjpeg
    draft mode down to >= S), so pass PIL images decoded the same way to get the same embeddings as from paths.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items: Sequence[ImageLike] | torch.Tensor = images if isinstance(images, torch.Tensor) else list(images)
    if len(items) == 0:
        raise ValueError("embed_images: no images")
    dev, dtype = _device_dtype(model, device)
    out = []
    with _eval_mode(model):
        starts = range(0, len(items), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
            chunk = items[start : start + batch_size]
            batch = torch.stack([_to_input(x, image_size, start + i) for i, x in enumerate(chunk)])
            emb = model.encode_image(batch.to(dev, dtype))
            _check_embedding(emb, len(batch), "encode_image")
            out.append(emb.float().cpu())
    return torch.cat(out)


def _check_tokenizer(model: nn.Module, tokenizer: Tokenizer) -> None:
    cfg = getattr(model, "cfg", None)  # CLIPConfig when the model is ours; other encoders skip the check
    if cfg is None:
        return
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"tokenizer vocab_size {tokenizer.vocab_size} > model vocab_size {cfg.vocab_size}")
    if tokenizer.context_length > cfg.context_length:
        raise ValueError(
            f"tokenizer context_length {tokenizer.context_length} > model context_length {cfg.context_length}"
        )


def embed_texts(
    model: nn.Module,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "embed texts",
) -> torch.Tensor:
    """L2-normalized text embeddings, float32 [N, E] on the CPU (texts longer than the context are truncated)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = list(texts)
    if not texts:
        raise ValueError("embed_texts: no texts")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"embed_texts: items {bad[:5]} are not strings (e.g. {type(texts[bad[0]]).__name__})")
    _check_tokenizer(model, tokenizer)
    dev, _ = _device_dtype(model, device)
    out = []
    with _eval_mode(model):
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
            tok = tokenizer(texts[start : start + batch_size])
            emb = model.encode_text(tok.tokens_BL.to(dev), tok.eot_index_B.to(dev))
            _check_embedding(emb, len(tok.tokens_BL), "encode_text")
            out.append(emb.float().cpu())
    return torch.cat(out)


# -------------------------------------------------------------------------------------------------------- zero-shot


def zero_shot_classifier(
    model: nn.Module,
    tokenizer: Tokenizer,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Class embeddings [C, E]: per class, the mean of its normalized prompt embeddings, renormalized (CLIP).

    Prompt ``t.format(name)`` for every template ``t`` (each must contain ``{}`` once).
    """
    if not class_names:
        raise ValueError("zero_shot_classifier: no class names")
    if not templates:
        raise ValueError("zero_shot_classifier: no templates")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"templates must contain '{{}}' exactly once: {bad}")
    prompts = [t.format(name) for name in class_names for t in templates]
    emb_CTE = embed_texts(model, tokenizer, prompts, batch_size=batch_size, device=device, progress=progress,
                          desc="embed prompts").view(len(class_names), len(templates), -1)  # fmt: skip
    return F.normalize(F.normalize(emb_CTE, dim=-1).mean(1), dim=-1)


def zero_shot_scores(
    img_NE: torch.Tensor, class_CE: torch.Tensor, labels_N: torch.Tensor, ks: Sequence[int] = (1, 3, 5)
) -> dict[str, float | int]:
    """``top{k}`` accuracies for ``ks`` plus ``num_classes`` and ``num_images``.

    A k above the number of classes C is evaluated as top-C (so it reads 1.0, as does k = C); the key keeps the
    requested k. :func:`format_eval_table` marks such trivial entries.
    """
    labels_N = torch.as_tensor(labels_N, dtype=torch.long)
    n_classes = class_CE.shape[0]
    if labels_N.numel() != img_NE.shape[0]:
        raise ValueError(f"{img_NE.shape[0]} images but {labels_N.numel()} labels")
    if labels_N.numel() and (int(labels_N.min()) < 0 or int(labels_N.max()) >= n_classes):
        raise ValueError(
            f"labels must be in [0, {n_classes}), got range [{int(labels_N.min())}, {int(labels_N.max())}]"
        )
    capped = {k: min(k, n_classes) for k in ks}
    acc = zero_shot_topk(img_NE, class_CE, labels_N, ks=sorted(set(capped.values())))
    out: dict[str, float | int] = {f"top{k}": acc[f"top{capped[k]}"] for k in ks}
    out.update(num_classes=n_classes, num_images=int(labels_N.numel()))
    return out


def zero_shot_eval(
    model: nn.Module,
    tokenizer: Tokenizer,
    dataset: ImageFolderDataset | str | Path,
    image_size: int,
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    ks: Sequence[int] = (1, 3, 5),
    batch_size: int = 64,
    image_features: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, float | int]:
    """Zero-shot top-k accuracy on a labeled folder (``root/<class>/*.jpg``); see :func:`zero_shot_scores`.

    ``image_features`` [N, E] (in ``dataset.samples`` order) skips embedding the images again.
    """
    ds = dataset if isinstance(dataset, ImageFolderDataset) else ImageFolderDataset(dataset)
    if image_features is None:
        image_features = embed_images(model, ds.paths, image_size, batch_size=batch_size, device=device,
                                      progress=progress, desc=f"zero-shot {ds.root.name}")  # fmt: skip
    classes = zero_shot_classifier(model, tokenizer, ds.class_names, templates, device=device)
    out = zero_shot_scores(image_features, classes, ds.labels, ks)
    out["num_templates"] = len(templates)
    return out


# ----------------------------------------------------------------------------------------------------- linear probe


def _features(x: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().double() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty [N, D] array, got shape {arr.shape}")
    return arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)


def _fit_probe(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, seed: int) -> Pipeline:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed)).fit(x, y)


def linear_probe(
    train_feats: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray | Sequence[int],
    test_feats: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray | Sequence[int],
    *,
    C: float | Sequence[float] = DEFAULT_PROBE_C,
    val_fraction: float = 0.25,
    seed: int = 0,
    max_iter: int = 1000,
) -> dict[str, float | int | None]:
    """Multinomial logistic regression on frozen features (CLIP's linear-probe protocol, kept cheap).

    Features are L2-normalized, then standardized with train statistics. With several ``C`` values, each is fit on
    a stratified ``1 - val_fraction`` part of train and scored on the rest; the best (first on ties) is refit on
    all of train and scored on test.

    Returns:
        ``accuracy`` (test), ``C`` (chosen), ``val_accuracy`` (of the chosen C; None without a sweep),
        ``num_train``, ``num_test``, ``num_classes``.
    """
    x_tr, x_te = _features(train_feats, "train_feats"), _features(test_feats, "test_feats")
    y_tr, y_te = np.asarray(train_labels).reshape(-1), np.asarray(test_labels).reshape(-1)
    if len(y_tr) != len(x_tr) or len(y_te) != len(x_te):
        raise ValueError(f"features/labels mismatch: train {len(x_tr)}/{len(y_tr)}, test {len(x_te)}/{len(y_te)}")
    if x_tr.shape[1] != x_te.shape[1]:
        raise ValueError(f"train dim {x_tr.shape[1]} != test dim {x_te.shape[1]}")
    if len(np.unique(y_tr)) < 2:
        raise ValueError(f"linear_probe needs >= 2 classes in train, got {np.unique(y_tr).tolist()}")
    grid = [float(C)] if isinstance(C, (int, float)) else [float(c) for c in C]
    if not grid or min(grid) <= 0:
        raise ValueError(f"C must be positive (one value or a non-empty list), got {C}")
    best = grid[0]
    val_acc: float | None = None
    if len(grid) > 1:
        fit_idx, val_idx = stratified_split(y_tr, val_fraction, seed)
        if len(val_idx) and len(np.unique(y_tr[fit_idx])) >= 2:
            scores = [
                float((_fit_probe(x_tr[fit_idx], y_tr[fit_idx], c, max_iter, seed).predict(x_tr[val_idx])
                       == y_tr[val_idx]).mean())
                for c in grid
            ]  # fmt: skip
            i = int(np.argmax(scores))
            best, val_acc = grid[i], scores[i]
    clf = _fit_probe(x_tr, y_tr, best, max_iter, seed)
    return {
        "accuracy": float((clf.predict(x_te) == y_te).mean()),
        "C": best,
        "val_accuracy": val_acc,
        "num_train": len(y_tr),
        "num_test": len(y_te),
        "num_classes": int(len(np.unique(np.concatenate([y_tr, y_te])))),
    }


# ------------------------------------------------------------------------------------------------------------ pairs


def pair_metrics(img_ND: torch.Tensor, txt_ND: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Retrieval R@k both ways (pair j ↔ j, ties pessimistic), alignment S_A, S_U (eq. 4.12), Wang & Isola
    uniformity of each modality, modality gap (see :mod:`framework.metrics.clip` for the definitions).

    Keys: ``image_to_text/R@k``, ``text_to_image/R@k``, ``alignment`` (higher = matched pairs closer),
    ``s_u_eq412`` (higher = mismatched pairs less similar), ``uniformity_image`` / ``uniformity_text`` (Wang & Isola,
    lower = more uniform), ``modality_gap``, ``num_pairs``. R@k with k >= N is trivially 1.
    """
    out: dict[str, float] = dict(retrieval_recall(img_ND, txt_ND, ks))
    out["alignment"] = alignment(img_ND, txt_ND)
    out["s_u_eq412"] = s_u_eq412(img_ND, txt_ND)
    out["uniformity_image"] = wang_isola_uniformity(img_ND)
    out["uniformity_text"] = wang_isola_uniformity(txt_ND)
    out["modality_gap"] = modality_gap(img_ND, txt_ND)
    out["num_pairs"] = int(img_ND.shape[0])
    return out


def unique_caption_indices(captions: Sequence[str]) -> list[int]:
    """Index of the first pair of each distinct (cleaned) caption.

    Identical captions get identical text embeddings; with one ground truth per item and pessimistic ties such
    duplicates would count as misses, so retrieval is scored on this subset.
    """
    seen: set[str] = set()
    keep = []
    for i, c in enumerate(captions):
        key = clean_caption(c)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def plot_modality_gap(
    img_ND: torch.Tensor,
    txt_ND: torch.Tensor,
    path: str | Path,
    title: str = "",
    *,
    max_points: int = 1000,
    n_links: int = 30,
    seed: int = 0,
) -> Path:
    """Save a two-panel PNG: a 2-D PCA of the joint embeddings, and matched vs random pair similarities.

    Left: images and texts projected on the top-2 principal components of the joint (centred) set, up to
    ``max_points`` pairs; ``n_links`` matched pairs joined by grey lines; the two centroids marked and joined.
    Right: histograms of the cosine similarity of matched pairs and of random mismatched pairs (each item with a
    random other partner). Their separation is what retrieval needs; the matched mean is S_A, and the per-pair
    distance is sqrt(2 - 2 cos). The title carries the centroid gap of all pairs.
    """
    from matplotlib.figure import Figure  # pyplot-free: no global backend state, safe in any process

    if img_ND.dim() != 2 or img_ND.shape != txt_ND.shape or img_ND.shape[0] < 2:
        raise ValueError(f"plot needs >= 2 pairs of equal [N, D] embeddings, got {tuple(img_ND.shape)}, "
                         f"{tuple(txt_ND.shape)}")  # fmt: skip
    img, txt = img_ND.detach().double().cpu(), txt_ND.detach().double().cpu()
    n = img.shape[0]
    gen = torch.Generator().manual_seed(seed)
    sub = torch.randperm(n, generator=gen)[:max_points] if n > max_points else torch.arange(n)
    joint = torch.cat([img[sub], txt[sub]])
    mean = joint.mean(0)
    _, s, vh = torch.linalg.svd(joint - mean, full_matrices=False)
    basis = vh[:2].T  # [D, 2]; D >= 2 for any real embedding
    p_img, p_txt = ((img[sub] - mean) @ basis).numpy(), ((txt[sub] - mean) @ basis).numpy()
    c_img, c_txt = p_img.mean(0), p_txt.mean(0)
    var = (s[:2] ** 2 / (s**2).sum().clamp_min(1e-30)).tolist() + [0.0, 0.0]

    matched = (img * txt).sum(1).numpy()
    shift = torch.randint(1, n, (n,), generator=gen)  # never 0: a partner other than the true one
    mismatched = (img * txt[(torch.arange(n) + shift) % n]).sum(1).numpy()

    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax_pca, ax_hist = fig.subplots(1, 2)
    for j in range(min(n_links, len(sub))):
        ax_pca.plot([p_img[j, 0], p_txt[j, 0]], [p_img[j, 1], p_txt[j, 1]], color="0.65", lw=0.6, zorder=1)
    ax_pca.scatter(p_img[:, 0], p_img[:, 1], s=9, alpha=0.6, color="tab:blue", label="images", zorder=2)
    ax_pca.scatter(p_txt[:, 0], p_txt[:, 1], s=9, alpha=0.6, color="tab:orange", marker="^", label="texts", zorder=2)
    ax_pca.plot([c_img[0], c_txt[0]], [c_img[1], c_txt[1]], "k--", lw=1.2, zorder=3)
    for c, color, label in ((c_img, "tab:blue", "image centroid"), (c_txt, "tab:orange", "text centroid")):
        ax_pca.scatter(*c, s=160, marker="X", color=color, edgecolors="black", linewidths=1.2, label=label, zorder=4)
    ax_pca.set_xlabel(f"PC1 ({var[0]:.0%} of variance)")
    ax_pca.set_ylabel(f"PC2 ({var[1]:.0%} of variance)")
    ax_pca.set_title(f"PCA of joint embeddings ({len(sub)} pairs, {min(n_links, len(sub))} linked)")
    ax_pca.legend(loc="best", fontsize=8)

    lo, hi = float(min(matched.min(), mismatched.min())), float(max(matched.max(), mismatched.max()))
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 40)
    ax_hist.hist(
        mismatched, bins=bins, alpha=0.6, color="tab:gray", label=f"random pairs (mean {mismatched.mean():.3f})"
    )
    ax_hist.hist(matched, bins=bins, alpha=0.6, color="tab:green", label=f"matched pairs (mean {matched.mean():.3f})")
    ax_hist.set_xlabel("cosine similarity image·text")
    ax_hist.set_ylabel("pairs")
    ax_hist.set_title(f"matched vs random pairs (N = {n})")
    ax_hist.legend(loc="best", fontsize=8)

    gap = modality_gap(img, txt)
    fig.suptitle(f"{title + ' | ' if title else ''}modality gap ||mean(img) - mean(txt)|| = {gap:.3f}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# ----------------------------------------------------------------------------------------------------------- report


def _pct(v: object) -> str:
    return "-" if not isinstance(v, (int, float)) or math.isnan(v) else f"{100 * v:.2f}"


def _num(v: object) -> str:
    return "-" if not isinstance(v, (int, float)) or math.isnan(v) else f"{v:.4f}"


def _render(title: str, header: list[str], body: list[list[str]], note: str = "") -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "-" * len(line(header))
    return "\n".join([title, line(header), rule, *(line(r) for r in body)] + ([note] if note else []))


def _ordered_union(dicts: Iterable[Mapping[str, object]]) -> list[str]:
    keys: list[str] = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    return keys


def format_eval_table(rows: Sequence[Mapping[str, object]]) -> str:
    """Plain-text report, one row per model, from :func:`evaluate_clip` results (``name`` names the row).

    Sections (each only when some row has it): zero-shot top-k per family (%), linear-probe accuracy per family and
    their mean (%), retrieval R@k image→text and text→image (%), and the embedding geometry: S_A, S_U (eq. 4.12),
    Wang & Isola uniformity of images and texts, modality gap. ``*`` marks top-k entries with k >= number of classes
    (trivially 100%); ``-`` a value a row lacks.
    """
    if not rows:
        raise ValueError("format_eval_table: no rows")
    names = [str(r.get("name", f"model {i}")) for i, r in enumerate(rows)]
    sections = []

    zs = [r.get("zero_shot") or {} for r in rows]
    families = _ordered_union(zs)
    if families:
        cols = [(f, k) for f in families for k in _ordered_union(z.get(f, {}) for z in zs) if k.startswith("top")]
        body, trivial = [], False
        for name, z in zip(names, zs, strict=True):
            cells = [name]
            for f, k in cols:
                res = z.get(f, {})
                mark = "*" if k in res and int(k[3:]) >= res.get("num_classes", math.inf) else ""
                trivial |= bool(mark)
                cells.append(_pct(res.get(k)) + mark)
            body.append(cells)
        note = "* k >= number of classes: trivially 100%" if trivial else ""
        sections.append(_render("Zero-shot classification (top-k accuracy, %)", ["model"] + [f"{f} {k}" for f, k in cols],
                                body, note))  # fmt: skip

    lp = [r.get("linear_probe") or {} for r in rows]
    families = _ordered_union(lp)
    if families:
        body = []
        for name, p in zip(names, lp, strict=True):
            accs = [p[f]["accuracy"] for f in families if f in p]
            mean = float(np.mean(accs)) if len(accs) == len(families) else math.nan
            body.append([name, *(_pct(p.get(f, {}).get("accuracy")) for f in families), _pct(mean)])
        sections.append(_render("Linear probe (accuracy, %)", ["model", *families, "mean"], body))

    pairs = [r.get("pairs") or {} for r in rows]
    recall_keys = [k for k in _ordered_union(pairs) if "/R@" in k]
    recall_keys.sort(key=lambda k: (not k.startswith("image_to_text"), int(k.split("@")[1])))
    if recall_keys:
        header = ["model"] + [
            ("i2t " if k.startswith("image_to_text") else "t2i ") + k.split("/")[1] for k in recall_keys
        ]
        body = [[name, *(_pct(p.get(k)) for k in recall_keys)] for name, p in zip(names, pairs, strict=True)]
        sections.append(_render("Retrieval (recall, %)", header, body))
    if any("alignment" in p for p in pairs):
        geo = ("alignment", "s_u_eq412", "uniformity_image", "uniformity_text", "modality_gap")
        # Results written before the rename store S_U (eq. 4.12) under "uniformity".
        pairs = [{"s_u_eq412": p["uniformity"], **p} if "uniformity" in p else p for p in pairs]
        body = [[name, *(_num(p.get(k)) for k in geo), str(p.get("num_pairs", "-"))]
                for name, p in zip(names, pairs, strict=True)]  # fmt: skip
        header = ["model", "S_A (align, up)", "S_U (eq. 4.12, up: mismatched apart)", "unif img (W&I, down)",
                  "unif txt (W&I, down)", "gap", "pairs"]  # fmt: skip
        note = ("S_A: mean matched-pair cosine. S_U (eq. 4.12): log mean exp(-cos) of mismatched pairs, higher when "
                "they are less similar. unif: Wang & Isola log E exp(-2||x-y||^2) within a modality, lower = more "
                "uniform.")  # fmt: skip
        sections.append(_render("Embedding geometry", header, body, note))
    return "\n\n".join(sections) + "\n"


# -------------------------------------------------------------------------------------------------------- full suite


def _finite_or_none(obj: object) -> object:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def _write_json(path: Path, obj: object) -> None:
    """Strict JSON (NaN/inf written as null), replaced atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite_or_none(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def evaluate_clip(
    model: nn.Module,
    tokenizer: Tokenizer,
    image_size: int,
    *,
    out_dir: str | Path,
    name: str = "model",
    pairs: tuple[Sequence[ImageLike] | torch.Tensor, Sequence[str]] | None = None,
    zeroshot_root: str | Path | None = None,
    probe_root: str | Path | None = None,
    templates: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    ks: Sequence[int] = (1, 3, 5),
    retrieval_ks: Sequence[int] = (1, 5, 10),
    probe_test_fraction: float = 0.5,
    probe_C: float | Sequence[float] = DEFAULT_PROBE_C,
    dedupe_captions: bool = True,
    plot: bool = True,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Run the evaluations the inputs allow; write ``out_dir/eval.json`` (and ``out_dir/modality_gap.png``).

    Args:
        model: CLIP-style dual encoder (see module docstring); its train/eval mode is restored afterwards.
        tokenizer: The tokenizer the model was trained with.
        image_size: Model input side (``model.cfg.image_size``).
        out_dir: Where ``eval.json`` and the figure go (created).
        name: Row name in :func:`format_eval_table` and the figure title.
        pairs: ``(images, captions)`` held-out pairs (e.g. read from shards): images as in :func:`embed_images`
            (decode shard JPEGs with ``decode_image(data, image_size)`` to match the training loader).
            Gives retrieval R@k (on the first pair of each distinct caption when ``dedupe_captions``), S_A, S_U,
            the Wang & Isola uniformity of both modalities and the modality gap (on all pairs), and the figure.
        zeroshot_root: Labeled folder(s), layout of :func:`load_labeled_root`; zero-shot top-``ks`` per family.
            Prompts: ``templates`` (one list, or per family) > ``<root>/templates.json`` > ``DEFAULT_TEMPLATES``.
        probe_root: Labeled folder(s) for the linear probe, split per class into train/test by a seeded shuffle
            (``probe_test_fraction`` to test). May be the same folder as ``zeroshot_root``: images are embedded
            once.
        probe_C: Fixed C or a grid swept on a validation part of the probe's train split.
        seed: Probe splits and figure subsampling.

    ``eval.json`` is strict JSON: non-finite numbers are written as ``null``.

    Returns:
        ``{"name", "image_size", "seed", "zero_shot": {family: {top1, top3, top5, num_classes, num_images,
        num_templates}}, "linear_probe": {family: {accuracy, C, ...}}, "pairs": {image_to_text/R@k, ...,
        alignment, s_u_eq412, uniformity_image, uniformity_text, modality_gap, num_pairs, retrieval_num_pairs},
        "summary": {...}, "plot": path or None}``; sections not run are empty.
    """
    if pairs is None and zeroshot_root is None and probe_root is None:
        raise ValueError("evaluate_clip: nothing to evaluate (pass pairs, zeroshot_root and/or probe_root)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {"name": name, "image_size": image_size, "seed": seed, "zero_shot": {},
                                 "linear_probe": {}, "pairs": {}, "summary": {}, "plot": None}  # fmt: skip
    cache: dict[Path, torch.Tensor] = {}

    def features(ds: ImageFolderDataset, family: str) -> torch.Tensor:
        key = ds.root.resolve()
        if key not in cache:
            cache[key] = embed_images(model, ds.paths, image_size, batch_size=batch_size, device=device,
                                      progress=progress, desc=f"embed {family}")  # fmt: skip
        return cache[key]

    if zeroshot_root is not None:
        zs_root = Path(zeroshot_root)
        zs: dict[str, object] = {}
        for family, ds in load_labeled_root(zs_root).items():
            fam_templates = _templates_for(family, zs_root, templates)
            zs[family] = zero_shot_eval(model, tokenizer, ds, image_size, templates=fam_templates, ks=ks,
                                        image_features=features(ds, family), device=device, progress=progress)  # fmt: skip
        result["zero_shot"] = zs

    if probe_root is not None:
        lp: dict[str, object] = {}
        datasets = load_labeled_root(probe_root)
        for family, ds in tqdm(datasets.items(), desc="linear probe", unit="family", disable=not progress):
            feats, labels = features(ds, family), ds.labels
            tr, te = ds.split(probe_test_fraction, seed)
            lp[family] = linear_probe(feats[tr], labels[tr], feats[te], labels[te], C=probe_C, seed=seed)
        result["linear_probe"] = lp

    if pairs is not None:
        images, captions = pairs
        captions = list(captions)
        if len(images) != len(captions):
            raise ValueError(f"pairs: {len(images)} images but {len(captions)} captions")
        if len(captions) < 2:
            raise ValueError(f"pairs: need >= 2 image-caption pairs, got {len(captions)}")
        img = embed_images(model, images, image_size, batch_size=batch_size, device=device, progress=progress,
                           desc="embed pair images")  # fmt: skip
        txt = embed_texts(model, tokenizer, captions, device=device, progress=progress, desc="embed captions")
        keep = unique_caption_indices(captions) if dedupe_captions else list(range(len(captions)))
        metrics = pair_metrics(img, txt, ks=())  # geometry on all pairs
        if len(keep) >= 2:
            metrics.update(retrieval_recall(img[keep], txt[keep], retrieval_ks))
        metrics["retrieval_num_pairs"] = len(keep)
        result["pairs"] = metrics
        if plot:
            result["plot"] = str(plot_modality_gap(img, txt, out / "modality_gap.png", title=name, seed=seed))

    summary: dict[str, float] = {}
    if result["zero_shot"]:
        summary["zero_shot_top1_mean"] = float(np.mean([v["top1"] for v in result["zero_shot"].values()]))
    if result["linear_probe"]:
        summary["linear_probe_mean"] = float(np.mean([v["accuracy"] for v in result["linear_probe"].values()]))
    result["summary"] = summary
    _write_json(out / "eval.json", result)
    return result
