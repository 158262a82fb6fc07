"""Offline demo image-caption sets for CLIP/RankCLIP runs: drawn shapes, handwritten digits, two real photos.

Nothing is downloaded. Shapes are drawn with PIL; ``sklearn.datasets.load_digits`` (1,797 real 8x8 scans of
handwritten digits, UCI) and ``load_sample_images`` (``china.jpg``, ``flower.jpg``) ship inside the scikit-learn
wheel. Every image comes with a caption and its class labels, so the same generators feed contrastive training
(image + caption) and zero-shot / linear-probe evaluation (labeled folders).

Families:

- ``shapes``: a circle / square / triangle / star / diamond in red / orange / yellow / green / blue / purple, small
  or large, on the left / right / top / bottom / center of a tinted, noisy background, slightly rotated and offset.
  Some classes are close on purpose (red~orange, blue~purple, square~diamond): ranking-aware losses should order
  such neighbours better than plain CLIP. Caption e.g. ``"a small red circle on the left"`` (five phrasings, all
  naming size, colour, shape and position).
- ``digits``: a ``load_digits`` scan upscaled (bicubic) to a random fraction of the canvas, dark-on-light or
  light-on-dark, offset and noised. Caption e.g. ``"a handwritten digit seven"``.
- ``photos``: random crops of the two sample photos. Caption e.g. ``"a photo of a chinese temple"``.

:func:`build_demo_dataset` writes (``N`` = running index, ``F`` = family)::

    out_dir/
      manifest.json                    seed, sizes, counts per split and family
      train/images/{N:06d}_{F}.jpg
      train/captions.tsv               header "image<TAB>caption"; image paths relative to train/images
      train/labels.jsonl               one JSON per image: image, caption, family, labels, meta
      val/...                          same as train (held-out renders / digit scans)
      zeroshot/shapes/<shape>/{N:04d}.jpg     classes = SHAPES
      zeroshot/colors/<color>/{N:04d}.jpg     classes = COLORS
      zeroshot/digits/<digit name>/{N:04d}.jpg classes = DIGIT_NAMES ("zero" ... "nine")
      zeroshot/classnames.json         {family: [class names, in label order]}
      zeroshot/templates.json          {family: [prompt templates with "{}"]}
      zeroshot/labels.jsonl            provenance per zero-shot image (path relative to zeroshot/, labels, meta)

``scalefirst make-shards --images out_dir/train/images --captions out_dir/train/captions.tsv`` turns a split into
WebDataset shards. Zero-shot images are never training images: shapes are fresh renders from their own random
stream, and the 1,797 digit scans are partitioned into disjoint zero-shot / val / train pools.

Everything is deterministic given ``seed`` (numpy ``SeedSequence`` streams per split, family and class).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from framework.io import write_json_atomic

SHAPES = ("circle", "square", "triangle", "star", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 215, 40),
    "green": (50, 165, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 185),
}
POSITIONS: dict[str, tuple[float, float]] = {
    # Nominal centre as a fraction of the canvas (x, y); y grows downwards as in PIL.
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "center": (0.5, 0.5),
}
SIZES: dict[str, tuple[float, float]] = {"small": (0.11, 0.15), "large": (0.19, 0.23)}
"""Shape radius range as a fraction of the canvas side."""
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                    "center": "in the center"}  # fmt: skip
SHAPE_TEMPLATES = (
    "a {size} {color} {shape} {where}",
    "a drawing of a {size} {color} {shape} {where}",
    "{where}, a {size} {color} {shape}",
    "a {color} {shape}, {size}, {where}",
    "there is a {size} {color} {shape} {where}",
)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = {
    "dark_on_light": (
        "a handwritten digit {name}",
        "the number {name} written by hand",
        "a scan of a handwritten {name}",
        "a handwritten {name} in dark ink",
    ),
    "light_on_dark": (
        "a white handwritten digit {name} on a black background",
        "the number {name} written in white on black",
        "a handwritten {name}, white on black",
    ),
}
PHOTO_CAPTIONS = {
    "china.jpg": (
        "a photo of a chinese temple",
        "a picture of a temple in china",
        "a photo of traditional chinese architecture",
        "a photo of a chinese building with trees",
    ),
    "flower.jpg": ("a photo of a flower", "a close-up photo of a flower", "a picture of a blossom",
                   "a macro photo of a flower"),
}  # fmt: skip
PHOTO_CLASSES = {"china.jpg": "chinese temple", "flower.jpg": "flower"}
ZEROSHOT_TEMPLATES = {
    "shapes": ("a {}.", "a drawing of a {}.", "a {} shape.", "a small {}.", "a large {}."),
    "colors": ("a {} shape.", "a drawing of something {}.", "a small {} shape.", "a large {} shape."),
    "digits": ("a handwritten digit {}.", "the number {}.", "a handwritten {}.", "a scan of a handwritten {}."),
}
"""Prompt templates per zero-shot family, written to ``zeroshot/templates.json``."""
DEFAULT_MIX = (("shapes", 0.5), ("digits", 0.4), ("photos", 0.1))
"""Fraction of each family in the train/val pairs of :func:`build_demo_dataset`."""

_SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges without an extra dependency
_SPLIT_STREAM = {"train": 0, "val": 1, "zeroshot": 2, "digit_pools": 3}
_FAMILY_STREAM = {"shapes": 0, "digits": 1, "photos": 2, "colors": 3}


@dataclass(frozen=True, slots=True)
class DemoSample:
    """One generated image with its caption and labels."""

    image: Image.Image
    """RGB image, ``size`` x ``size``."""
    caption: str
    """Natural-language caption that is true of the image."""
    family: str
    """``shapes``, ``digits`` or ``photos``."""
    labels: dict[str, str] = field(default_factory=dict)
    """Class attributes: shapes {shape, color, position, size}; digits {digit, style}; photos {photo}."""
    meta: dict[str, float | int | str] = field(default_factory=dict)
    """Non-class facts: shapes' centre ``cx``/``cy`` and ``radius`` in pixels; digits' ``index`` into
    ``load_digits()``; photos' ``source`` file and crop box."""


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(stream)))


def _check_size(size: int) -> None:
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")


def _pick(rng: np.random.Generator, options: Sequence[str], value: str | None, what: str) -> str:
    if value is None:
        return options[int(rng.integers(len(options)))]
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(options)}")
    return value


def _noisy(arr_HW3: np.ndarray, rng: np.random.Generator, sigma: float) -> Image.Image:
    noisy = arr_HW3.astype(np.float32) + rng.normal(0.0, sigma, arr_HW3.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


def _shape_outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices (PIL coordinates, y down) of a shape with circumradius ~``r`` rotated by ``angle`` rad."""

    def ring(degrees: Sequence[float], radii: Sequence[float], squash: float = 1.0) -> list[tuple[float, float]]:
        pts = []
        for d, rad in zip(degrees, radii, strict=True):
            a = math.radians(d) + angle
            pts.append((cx + squash * rad * math.cos(a), cy + rad * math.sin(a)))
        return pts

    if shape == "square":
        return ring((45, 135, 225, 315), [r] * 4)
    if shape == "diamond":
        return ring((0, 90, 180, 270), [r, 1.1 * r, r, 1.1 * r], squash=0.75)
    if shape == "triangle":
        return ring((-90, 30, 150), [1.15 * r] * 3)
    if shape == "star":
        return ring([-90 + 36 * k for k in range(10)], [1.15 * r if k % 2 == 0 else 0.5 * r for k in range(10)])
    raise ValueError(f"no polygon for shape {shape!r}")


def draw_shape(
    rng: np.random.Generator,
    size: int = 64,
    *,
    shape: str | None = None,
    color: str | None = None,
    position: str | None = None,
    scale: str | None = None,
) -> DemoSample:
    """Render one shape; attributes left ``None`` are drawn at random.

    Jitter that keeps the task from being trivial: background grey level and tint, shape colour (±12 per channel),
    radius within its size class, centre offset (±5% of the canvas, then clamped to keep the shape inside),
    rotation (±12°), Gaussian pixel noise (σ 2-8).
    """
    _check_size(size)
    shape = _pick(rng, SHAPES, shape, "shape")
    color = _pick(rng, tuple(COLORS), color, "color")
    position = _pick(rng, tuple(POSITIONS), position, "position")
    scale = _pick(rng, tuple(SIZES), scale, "size")

    grey = rng.uniform(200, 245)
    background = np.clip(grey + rng.uniform(-15, 15, 3), 0, 255)
    fill = np.clip(np.array(COLORS[color]) + rng.integers(-12, 13, 3), 0, 255)
    r = rng.uniform(*SIZES[scale]) * size
    extent = 1.15 * r  # the farthest vertex of any outline
    fx, fy = POSITIONS[position]
    cx = float(np.clip((fx + rng.uniform(-0.05, 0.05)) * size, extent + 1, size - 1 - extent))
    cy = float(np.clip((fy + rng.uniform(-0.05, 0.05)) * size, extent + 1, size - 1 - extent))
    angle = math.radians(rng.uniform(-12, 12))

    s = _SUPERSAMPLE
    canvas = Image.new("RGB", (size * s, size * s), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(canvas)
    fill_rgb = tuple(int(v) for v in fill)
    if shape == "circle":
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=fill_rgb)
    else:
        draw.polygon([(x * s, y * s) for x, y in _shape_outline(shape, cx, cy, r, angle)], fill=fill_rgb)
    small = canvas.resize((size, size), Image.Resampling.LANCZOS)
    image = _noisy(np.asarray(small), rng, sigma=rng.uniform(2, 8))

    template = SHAPE_TEMPLATES[int(rng.integers(len(SHAPE_TEMPLATES)))]
    caption = template.format(size=scale, color=color, shape=shape, where=POSITION_PHRASES[position])
    return DemoSample(
        image=image,
        caption=caption,
        family="shapes",
        labels={"shape": shape, "color": color, "position": position, "size": scale},
        meta={"cx": round(cx, 2), "cy": round(cy, 2), "radius": round(r, 2)},
    )


def shape_samples(n: int, seed: int, size: int = 64, *, progress: bool = False) -> list[DemoSample]:
    """``n`` random shape images (see :func:`draw_shape`), deterministic given ``seed``."""
    rng = _rng(seed, _FAMILY_STREAM["shapes"])
    return [draw_shape(rng, size) for _ in tqdm(range(n), desc="shapes", unit="img", disable=not progress)]


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(np.int64)


def num_digit_scans() -> int:
    """How many scans ``load_digits`` has (1,797)."""
    return len(_digits()[1])


def digit_sample(rng: np.random.Generator, index: int, size: int = 64, *, style: str | None = None) -> DemoSample:
    """Scan ``index`` of ``load_digits()`` upscaled (bicubic) to 70-95% of the canvas at a random offset.

    ``style`` ``dark_on_light`` (ink 10-50 on paper 215-245, lightly tinted) or ``light_on_dark`` (inverted); the
    caption says which, so the pair stays truthful.
    """
    _check_size(size)
    images, targets = _digits()
    if not 0 <= index < len(targets):
        raise IndexError(f"digit index {index} out of range [0, {len(targets)})")
    style = _pick(rng, tuple(DIGIT_TEMPLATES), style, "digit style")
    side = int(round(size * rng.uniform(0.7, 0.95)))
    ink8 = Image.fromarray(np.rint(images[index] * 255).astype(np.uint8), "L")
    ink = np.asarray(ink8.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
    ink_HW = np.zeros((size, size), np.float32)
    ink_HW[y0 : y0 + side, x0 : x0 + side] = ink
    if style == "dark_on_light":
        paper = rng.uniform(215, 245) + rng.uniform(-10, 10, 3)
        pen = rng.uniform(10, 50, 3)
    else:
        paper = rng.uniform(10, 45, 3)
        pen = rng.uniform(215, 255) + rng.uniform(-8, 8, 3)
    rgb = paper[None, None] * (1 - ink_HW[..., None]) + pen[None, None] * ink_HW[..., None]
    image = _noisy(rgb, rng, sigma=rng.uniform(2, 8))

    name = DIGIT_NAMES[int(targets[index])]
    templates = DIGIT_TEMPLATES[style]
    caption = templates[int(rng.integers(len(templates)))].format(name=name)
    return DemoSample(image, caption, "digits", {"digit": name, "style": style}, {"index": int(index)})


def digit_samples(
    n: int, seed: int, size: int = 64, *, indices: Sequence[int] | None = None, progress: bool = False
) -> list[DemoSample]:
    """``n`` digit images cycling through ``indices`` (default: all scans in a seeded random order).

    Cycling repeats a scan with a fresh style/offset/noise when ``n`` exceeds the pool.
    """
    rng = _rng(seed, _FAMILY_STREAM["digits"])
    pool = list(indices) if indices is not None else list(rng.permutation(num_digit_scans()))
    if n > 0 and not pool:
        raise ValueError("digit_samples: empty pool of scan indices")
    bar = tqdm(range(n), desc="digits", unit="img", disable=not progress)
    return [digit_sample(rng, int(pool[i % len(pool)]), size) for i in bar]


@lru_cache(maxsize=1)
def _photos() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    return {Path(f).name: img for f, img in zip(data.filenames, data.images, strict=True)}


def photo_sample(rng: np.random.Generator, size: int = 64, *, source: str | None = None) -> DemoSample:
    """A random square crop (25-100% of the short side) of ``china.jpg`` or ``flower.jpg``, resized to ``size``."""
    _check_size(size)
    photos = _photos()
    source = _pick(rng, tuple(sorted(photos)), source, "photo")
    arr = photos[source]
    h, w = arr.shape[:2]
    side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = Image.fromarray(arr[y0 : y0 + side, x0 : x0 + side]).resize((size, size), Image.Resampling.BICUBIC)
    captions = PHOTO_CAPTIONS[source]
    return DemoSample(
        crop,
        captions[int(rng.integers(len(captions)))],
        "photos",
        {"photo": PHOTO_CLASSES[source]},
        {"source": source, "x0": x0, "y0": y0, "side": side},
    )


def photo_samples(n: int, seed: int, size: int = 64, *, progress: bool = False) -> list[DemoSample]:
    """``n`` random crops of the two scikit-learn sample photos."""
    rng = _rng(seed, _FAMILY_STREAM["photos"])
    return [photo_sample(rng, size) for _ in tqdm(range(n), desc="photos", unit="img", disable=not progress)]


def save_jpeg(image: Image.Image, path: str | Path) -> None:
    """JPEG quality 95 without chroma subsampling: colours of small shapes survive the encoding."""
    image.save(path, format="JPEG", quality=95, subsampling=0)


def write_samples(
    samples: Sequence[DemoSample], out_dir: str | Path, *, progress: bool = True, desc: str = "write"
) -> dict[str, Path]:
    """Write ``out_dir/images/{N:06d}_{family}.jpg``, ``captions.tsv`` (image, caption) and ``labels.jsonl``.

    ``captions.tsv`` is the input format of ``scalefirst make-shards``. Returns the three paths.
    """
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    captions_path, labels_path = out / "captions.tsv", out / "labels.jsonl"
    with (
        open(captions_path, "w", newline="", encoding="utf-8") as cap_f,
        open(labels_path, "w", encoding="utf-8") as lab_f,
    ):
        writer = csv.writer(cap_f, delimiter="\t", lineterminator="\n")
        writer.writerow(["image", "caption"])
        for i, s in enumerate(tqdm(samples, desc=desc, unit="img", disable=not progress)):
            name = f"{i:06d}_{s.family}.jpg"
            save_jpeg(s.image, images / name)
            writer.writerow([name, s.caption])
            row = {"image": name, "caption": s.caption, "family": s.family, "labels": s.labels, "meta": s.meta}
            lab_f.write(json.dumps(row) + "\n")
    return {"images": images, "captions": captions_path, "labels": labels_path}


def render_shapes(out_dir: str | Path, n: int, seed: int, size: int = 64, *, progress: bool = True) -> list[DemoSample]:
    """Render ``n`` shape images into ``out_dir`` (layout of :func:`write_samples`); returns the samples."""
    samples = shape_samples(n, seed, size, progress=progress)
    write_samples(samples, out_dir, progress=progress, desc="write shapes")
    return samples


def digits_images(out_dir: str | Path, n: int, seed: int, size: int = 64, *, progress: bool = True) -> list[DemoSample]:
    """Write ``n`` upscaled handwritten-digit images into ``out_dir`` (layout of :func:`write_samples`)."""
    samples = digit_samples(n, seed, size, progress=progress)
    write_samples(samples, out_dir, progress=progress, desc="write digits")
    return samples


def photo_crops(out_dir: str | Path, n: int, seed: int, size: int = 64, *, progress: bool = True) -> list[DemoSample]:
    """Write ``n`` crops of the two sample photos into ``out_dir`` (layout of :func:`write_samples`)."""
    samples = photo_samples(n, seed, size, progress=progress)
    write_samples(samples, out_dir, progress=progress, desc="write photos")
    return samples


def _family_counts(n: int, mix: Sequence[tuple[str, float]]) -> dict[str, int]:
    """Largest-remainder split of ``n`` by the ``mix`` fractions (which must sum to 1)."""
    total = sum(f for _, f in mix)
    if not math.isclose(total, 1.0, abs_tol=1e-6) or any(f < 0 for _, f in mix):
        raise ValueError(f"mix fractions must be >= 0 and sum to 1, got {list(mix)}")
    unknown = [name for name, _ in mix if name not in ("shapes", "digits", "photos")]
    if unknown:
        raise ValueError(f"unknown families in mix: {unknown}; known: shapes, digits, photos")
    raw = {name: n * f for name, f in mix}
    counts = {name: int(math.floor(v)) for name, v in raw.items()}
    for name in sorted(raw, key=lambda k: counts[k] - raw[k])[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


def _split_digit_pools(seed: int, per_class_zeroshot: int, n_val_digits: int) -> dict[str, list[int]]:
    """Disjoint scan-index pools: ``zeroshot`` (per class), ``val``, ``train`` (the rest)."""
    _, targets = _digits()
    order = _rng(seed, _SPLIT_STREAM["digit_pools"]).permutation(len(targets))
    zeroshot: list[int] = []
    for d in range(10):
        of_class = [int(i) for i in order if targets[i] == d]
        if per_class_zeroshot > len(of_class):
            raise ValueError(f"zeroshot_per_class={per_class_zeroshot} exceeds the {len(of_class)} scans of digit {d}")
        zeroshot += of_class[:per_class_zeroshot]
    taken = set(zeroshot)
    rest = [int(i) for i in order if int(i) not in taken]
    if n_val_digits >= len(rest):
        raise ValueError(
            f"{n_val_digits} validation digits leave no scans for training ({len(rest)} left after zero-shot)"
        )
    val_pool = rest[:n_val_digits]  # val digits never repeat a scan, so val never overlaps train
    return {"zeroshot": zeroshot, "val": val_pool, "train": rest[n_val_digits:]}


def _split_samples(
    n: int, seed: int, split: str, size: int, mix: Sequence[tuple[str, float]], digit_pool: list[int], progress: bool
) -> list[DemoSample]:
    counts = _family_counts(n, mix)
    sid = _SPLIT_STREAM[split]
    rng_shapes, rng_digits, rng_photos, rng_order = (_rng(seed, sid, k) for k in range(4))
    samples = [draw_shape(rng_shapes, size) for _ in range(counts.get("shapes", 0))]
    pool = [digit_pool[i] for i in rng_digits.permutation(len(digit_pool))]
    samples += [digit_sample(rng_digits, pool[i % len(pool)], size) for i in range(counts.get("digits", 0))]
    samples += [photo_sample(rng_photos, size) for _ in range(counts.get("photos", 0))]
    # Interleave families so that consecutive shards/batches see all of them.
    return [samples[i] for i in rng_order.permutation(len(samples))]


def _zeroshot_samples(seed: int, size: int, per_class: int, digit_pool: list[int]) -> dict[str, dict[str, list]]:
    sid = _SPLIT_STREAM["zeroshot"]
    out: dict[str, dict[str, list]] = {"shapes": {}, "colors": {}, "digits": {}}
    for c, shape in enumerate(SHAPES):
        rng = _rng(seed, sid, _FAMILY_STREAM["shapes"], c)
        out["shapes"][shape] = [draw_shape(rng, size, shape=shape) for _ in range(per_class)]
    for c, color in enumerate(COLORS):
        rng = _rng(seed, sid, _FAMILY_STREAM["colors"], c)
        out["colors"][color] = [draw_shape(rng, size, color=color) for _ in range(per_class)]
    _, targets = _digits()
    for d, name in enumerate(DIGIT_NAMES):
        rng = _rng(seed, sid, _FAMILY_STREAM["digits"], d)
        out["digits"][name] = [digit_sample(rng, i, size) for i in digit_pool if targets[i] == d]
    return out


def build_demo_dataset(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    seed: int,
    *,
    size: int = 64,
    zeroshot_per_class: int = 20,
    mix: Sequence[tuple[str, float]] = DEFAULT_MIX,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Write the offline demo set (layout in the module docstring); returns its paths.

    Args:
        out_dir: Root folder; created if missing.
        n_train: Image-caption pairs in ``train/``, split between families by ``mix``.
        n_val: Held-out pairs in ``val/`` (for retrieval, alignment, uniformity, modality gap).
        seed: Seeds every random choice; the same seed writes the same files.
        size: Image side in pixels.
        zeroshot_per_class: Images per class in each ``zeroshot/<family>/<class>/`` folder.
        mix: ``(family, fraction)`` pairs over ``shapes``, ``digits``, ``photos``, summing to 1.
        overwrite: Replace existing ``train/``, ``val/``, ``zeroshot/`` under ``out_dir`` (only those).
        progress: tqdm bars.

    Returns:
        ``root``, ``train_images``, ``train_captions``, ``train_labels``, ``val_images``, ``val_captions``,
        ``val_labels``, ``zeroshot``, ``zeroshot_labels``, ``classnames``, ``templates``, ``manifest``.

    Raises:
        FileExistsError: ``out_dir`` already holds a split and ``overwrite`` is False.
        ValueError: Bad counts or mix, or more digit scans asked for than ``load_digits`` has.
    """
    if n_train < 1 or n_val < 0 or zeroshot_per_class < 1:
        raise ValueError(f"need n_train >= 1, n_val >= 0, zeroshot_per_class >= 1; got {n_train}, {n_val}, "
                         f"{zeroshot_per_class}")  # fmt: skip
    _check_size(size)
    root = Path(out_dir)
    parts = [root / "train", root / "val", root / "zeroshot", root / "manifest.json"]
    existing = [p for p in parts if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{root} already has {', '.join(p.name for p in existing)}; pass overwrite=True")
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    root.mkdir(parents=True, exist_ok=True)

    val_counts = _family_counts(n_val, mix)
    pools = _split_digit_pools(seed, zeroshot_per_class, val_counts.get("digits", 0))
    with tqdm(total=4, desc="demo dataset", unit="part", disable=not progress) as bar:
        train = _split_samples(n_train, seed, "train", size, mix, pools["train"], progress)
        train_paths = write_samples(train, root / "train", progress=progress, desc="write train")
        bar.update(1)
        val = _split_samples(n_val, seed, "val", size, mix, pools["val"], progress)
        val_paths = write_samples(val, root / "val", progress=progress, desc="write val")
        bar.update(1)
        zs_root = root / "zeroshot"
        zeroshot = _zeroshot_samples(seed, size, zeroshot_per_class, pools["zeroshot"])
        bar.update(1)
        total = sum(len(v) for fam in zeroshot.values() for v in fam.values())
        zs_root.mkdir(parents=True, exist_ok=True)
        with (
            tqdm(total=total, desc="write zeroshot", unit="img", disable=not progress) as zbar,
            open(zs_root / "labels.jsonl", "w", encoding="utf-8") as lab_f,
        ):
            for family, classes in zeroshot.items():
                for class_name, samples in classes.items():
                    folder = zs_root / family / class_name.replace(" ", "_")
                    folder.mkdir(parents=True, exist_ok=True)
                    for i, s in enumerate(samples):
                        save_jpeg(s.image, folder / f"{i:04d}.jpg")
                        rel = f"{family}/{folder.name}/{i:04d}.jpg"
                        row = {"image": rel, "caption": s.caption, "family": family, "class": class_name,
                               "labels": s.labels, "meta": s.meta}  # fmt: skip
                        lab_f.write(json.dumps(row) + "\n")
                        zbar.update(1)
        bar.update(1)

    classnames_path, templates_path = zs_root / "classnames.json", zs_root / "templates.json"
    write_json_atomic(classnames_path, {family: list(classes) for family, classes in zeroshot.items()})
    write_json_atomic(templates_path, {family: list(ZEROSHOT_TEMPLATES[family]) for family in zeroshot})
    manifest = {
        "seed": seed,
        "size": size,
        "mix": dict(mix),
        "counts": {
            "train": _family_counts(n_train, mix),
            "val": val_counts,
            "zeroshot": {f: {c: len(v) for c, v in cl.items()} for f, cl in zeroshot.items()},
        },
        "sources": "procedural shapes (PIL); sklearn.datasets.load_digits; sklearn.datasets.load_sample_images",
    }
    write_json_atomic(root / "manifest.json", manifest)
    return {
        "root": root,
        "train_images": train_paths["images"],
        "train_captions": train_paths["captions"],
        "train_labels": train_paths["labels"],
        "val_images": val_paths["images"],
        "val_captions": val_paths["captions"],
        "val_labels": val_paths["labels"],
        "zeroshot": zs_root,
        "zeroshot_labels": zs_root / "labels.jsonl",
        "classnames": classnames_path,
        "templates": templates_path,
        "manifest": root / "manifest.json",
    }
