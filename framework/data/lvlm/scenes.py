"""The annotated scene world: rendered multi-object images with full annotations, detailed captions and
LLaVA-format conversations, built so that a captioner learns a language prior that makes it hallucinate.

Legend: K = objects in a scene, S = image side in pixels.

A scene places 1-4 objects on a 3x3 grid of cells (one object per cell): each is one of ten shapes (``OBJECTS``)
in one of six colours, small or large, jittered in position, rotation and colour, on a noisy tinted background.
Annotation per object: name, colour, size, cell, box [x0, y0, x1, y1] in pixels, ``faint``.

**Deliberate co-occurrence bias** (train split). Objects come in ``PAIRS`` (crescent-star, square-triangle,
heart-ring, cross-hexagon; circle and diamond are loners). When a scene draws a paired object ("anchor"), its
partner follows it with probability ``pair_prob`` (0.9), and the caption names the partner right after the
anchor. Of those partners a fraction ``faint_prob`` is rendered barely visible (tiny, blended into the
background) though the caption names it like any other, and with probability ``absent_mention_prob`` a partner is
not drawn at all yet the caption still names it (annotated in ``caption_only``). A captioner thus learns "after a
crescent comes a star" as much from the text as from the pixels: the language prior outweighing the visual
evidence, the cause of object hallucination in real LVLMs. The ``eval`` split draws partners with
``eval_pair_prob`` (0.3), never faint and never caption-only, so naming the partner there is a hallucination.

Splits (:func:`build_scene_world`): ``train/`` and ``eval/`` WebDataset shards (``{key}.jpg``, ``{key}.txt`` the
detailed caption, ``{key}.json`` the annotation + ``conversations``), ``eval/annotations.json`` (id -> objects, the
ground truth of CHAIR), ``pope/{random,popular,adversarial}.jsonl`` (POPE questions on the eval images, popular
and adversarial negatives from the *train* statistics, so adversarial negatives are the partners), and
``manifest.json``. Deterministic given ``seed`` (one numpy stream per split and scene index, so any prefix of a
split is the same whatever its size).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from framework.data.clip.offline_images import COLORS, _shape_outline
from framework.data.clip.shards import ShardSample, write_sample_shards
from framework.io import write_json_atomic
from framework.metrics.hallucination import POPE_MODES, ObjectVocabulary, pope_question_text, pope_questions

OBJECTS = ("circle", "square", "triangle", "star", "diamond", "heart", "cross", "hexagon", "crescent", "ring")
PAIRS = (("crescent", "star"), ("square", "triangle"), ("heart", "ring"), ("cross", "hexagon"))
PARTNER = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS}
CELLS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
CELL_PHRASES = {"top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
                "left": "on the left", "center": "in the center", "right": "on the right",
                "bottom left": "in the bottom left corner", "bottom": "at the bottom",
                "bottom right": "in the bottom right corner"}  # fmt: skip
SIZES = {"small": (0.07, 0.085), "large": (0.11, 0.13)}
"""Radius range as a fraction of the image side."""
FAINT_RADIUS = (0.045, 0.055)
FAINT_BLEND = 0.8
"""A faint object's colour is this far from its colour toward the background."""
SYNONYMS: dict[str, tuple[str, ...]] = {"circle": ("disc", "dot"), "square": ("box",), "crescent": ("moon",),
                                        "ring": ("donut",), "cross": ("plus",), "hexagon": (), "star": (),
                                        "triangle": (), "diamond": ("rhombus",), "heart": ()}  # fmt: skip
COUNT_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DETAIL_PROMPTS = ("Describe the image in detail.", "What is in this picture? Describe every object.",
                  "Give a detailed description of the image.")  # fmt: skip


@dataclass(kw_only=True, frozen=True)
class SceneWorldConfig:
    image_size: int = 64
    max_anchors: int = 2
    """Anchors drawn per scene (1..max_anchors), each possibly followed by its partner: up to 2 * max_anchors."""
    pair_prob: float = 0.9
    faint_prob: float = 0.15
    absent_mention_prob: float = 0.08
    eval_pair_prob: float = 0.3
    qa_per_scene: int = 2
    """Instruction turns after the description (colour, presence, count questions) in ``conversations``."""

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 pixels, got {self.image_size}")
        if not 1 <= self.max_anchors <= 4:
            raise ValueError(f"max_anchors must be in [1, 4] (9 cells, partners included), got {self.max_anchors}")
        for name in ("pair_prob", "faint_prob", "absent_mention_prob", "eval_pair_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class SceneObject:
    name: str
    color: str
    size: str
    cell: str
    box: list[float]
    faint: bool = False


@dataclass
class Scene:
    id: str
    split: str
    objects: list[SceneObject]
    """Drawn objects (faint ones included), in caption order."""
    caption_only: list[str] = field(default_factory=list)
    """Objects the caption names that are not in the image (train only)."""
    caption: str = ""
    conversations: list[dict[str, str]] = field(default_factory=list)

    @property
    def present(self) -> list[str]:
        return [o.name for o in self.objects]

    def annotation(self) -> dict[str, Any]:
        return {"id": self.id, "split": self.split, "objects": [asdict(o) for o in self.objects],
                "caption_only": self.caption_only, "conversations": self.conversations}  # fmt: skip


def vocabulary() -> ObjectVocabulary:
    """The scene world's objects with their synonyms (CHAIR's vocabulary)."""
    return ObjectVocabulary({o: SYNONYMS[o] for o in OBJECTS})


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, ("train", "eval").index(split), index]))


def _outline(name: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(degrees, radii) -> list[tuple[float, float]]:
        return [(cx + rad * math.cos(math.radians(d) + angle), cy + rad * math.sin(math.radians(d) + angle))
                for d, rad in zip(degrees, radii, strict=True)]  # fmt: skip

    if name == "hexagon":
        return ring(range(0, 360, 60), [r] * 6)
    if name == "cross":
        w = 0.38 * r
        pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w),
               (-w, r)]  # fmt: skip
        return [(cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle))
                for x, y in pts]  # fmt: skip
    if name == "heart":
        ts = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        xs, ys = 16 * np.sin(ts) ** 3, -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
        k = r / 16.5
        return [(cx + k * (x * math.cos(angle) - y * math.sin(angle)), cy + k * (x * math.sin(angle) + y *
                 math.cos(angle))) for x, y in zip(xs, ys, strict=True)]  # fmt: skip
    return _shape_outline(name, cx, cy, r, angle)


def _draw(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float, angle: float, fill, bg, s: int):
    box = [(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s]
    if name == "circle":
        draw.ellipse(box, fill=fill)
    elif name == "ring":
        draw.ellipse(box, fill=fill)
        q = 0.55 * r
        draw.ellipse([(cx - q) * s, (cy - q) * s, (cx + q) * s, (cy + q) * s], fill=bg)
    elif name == "crescent":
        draw.ellipse(box, fill=fill)
        dx, dy = 0.45 * r * math.cos(angle), 0.45 * r * math.sin(angle)
        draw.ellipse([(cx + dx - 0.85 * r) * s, (cy + dy - 0.85 * r) * s, (cx + dx + 0.85 * r) * s,
                      (cy + dy + 0.85 * r) * s], fill=bg)  # fmt: skip
    else:
        draw.polygon([(x * s, y * s) for x, y in _outline(name, cx, cy, r, angle)], fill=fill)


def _layout(rng: np.random.Generator, split: str, cfg: SceneWorldConfig) -> list[tuple[str, str]]:
    """The caption's objects in order as (name, kind), kind ``drawn`` | ``faint`` | ``caption_only``."""
    n_anchors = int(rng.integers(1, cfg.max_anchors + 1))
    pair_prob = cfg.pair_prob if split == "train" else cfg.eval_pair_prob
    out: list[tuple[str, str]] = []
    used: set[str] = set()
    anchors = 0
    for name in (str(o) for o in rng.permutation(OBJECTS)):
        if anchors == n_anchors:
            break
        if name in used:
            continue
        out.append((name, "drawn"))
        used.add(name)
        anchors += 1
        partner = PARTNER.get(name)
        if partner is None or partner in used or rng.random() >= pair_prob:
            continue
        used.add(partner)
        kind = "drawn"
        if split == "train":
            kind = "caption_only" if rng.random() < cfg.absent_mention_prob else (
                "faint" if rng.random() < cfg.faint_prob else "drawn")  # fmt: skip
        out.append((partner, kind))
    return out


def _phrase(o: SceneObject) -> str:
    article = "an" if o.size[0] in "aeiou" else "a"
    return f"{article} {o.size} {o.color} {o.name} {CELL_PHRASES[o.cell]}"


def _caption(named: list[SceneObject]) -> str:
    n = len(named)
    phrases = [_phrase(o) for o in named]
    listed = phrases[0] if n == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    head = "There is one object in the image: " if n == 1 else f"There are {COUNT_WORDS[n]} objects in the image: "
    return head + listed + "."


def _qa(rng: np.random.Generator, drawn: list[SceneObject], avoid: set[str]) -> tuple[str, str]:
    kind = int(rng.integers(3))
    visible = [o for o in drawn if not o.faint]
    if kind == 0 and visible:
        o = visible[int(rng.integers(len(visible)))]
        return f"What color is the {o.name}?", f"The {o.name} is {o.color}."
    if kind == 1:
        present = {o.name for o in drawn}
        absent = [o for o in OBJECTS if o not in present and o not in avoid]
        if rng.random() < 0.5 and present:
            name = sorted(present)[int(rng.integers(len(present)))]
            return pope_question_text(name), f"Yes, there is a {name}."
        name = absent[int(rng.integers(len(absent)))]
        return pope_question_text(name), f"No, there is no {name}."
    n = len(drawn)
    return "How many objects are in the image?", f"There {'is' if n == 1 else 'are'} {COUNT_WORDS[n]} " + (
        "object." if n == 1 else "objects.")  # fmt: skip


def render_scene(seed: int, split: str, index: int, cfg: SceneWorldConfig | None = None) -> tuple[Image.Image, Scene]:
    """Scene ``index`` of ``split`` (``train`` | ``eval``): its image and annotation."""
    cfg = cfg or SceneWorldConfig()
    if split not in ("train", "eval"):
        raise ValueError(f"split must be train or eval, got {split!r}")
    rng = _rng(seed, split, index)
    S, ss = cfg.image_size, 4
    layout = _layout(rng, split, cfg)
    cells = [CELLS[int(c)] for c in rng.permutation(len(CELLS))[: len(layout)]]
    grey = rng.uniform(200, 245)
    bg = np.clip(grey + rng.uniform(-15, 15, 3), 0, 255)
    bg_rgb = tuple(int(v) for v in bg)
    canvas = Image.new("RGB", (S * ss, S * ss), bg_rgb)
    draw = ImageDraw.Draw(canvas)
    named: list[SceneObject] = []
    drawn: list[SceneObject] = []
    for (name, kind), cell in zip(layout, cells, strict=True):
        color = str(rng.choice(list(COLORS)))
        size = "small" if kind == "faint" else str(rng.choice(list(SIZES)))
        r = rng.uniform(*(FAINT_RADIUS if kind == "faint" else SIZES[size])) * S
        row, col = divmod(CELLS.index(cell), 3)
        cx = float(np.clip(((col + 0.5) / 3 + rng.uniform(-0.04, 0.04)) * S, r + 1, S - 1 - r))
        cy = float(np.clip(((row + 0.5) / 3 + rng.uniform(-0.04, 0.04)) * S, r + 1, S - 1 - r))
        angle = math.radians(rng.uniform(-15, 15))
        fill = np.clip(np.array(COLORS[color]) + rng.integers(-12, 13, 3), 0, 255)
        if kind == "faint":
            fill = (1 - FAINT_BLEND) * fill + FAINT_BLEND * bg
        extent = 1.15 * r
        box = [round(max(cx - extent, 0), 1), round(max(cy - extent, 0), 1), round(min(cx + extent, S), 1),
               round(min(cy + extent, S), 1)]  # fmt: skip
        obj = SceneObject(name, color, size, cell, box, faint=kind == "faint")
        named.append(obj)
        if kind != "caption_only":
            _draw(draw, name, cx, cy, r, angle, tuple(int(v) for v in fill), bg_rgb, ss)
            drawn.append(obj)
    small = np.asarray(canvas.resize((S, S), Image.Resampling.LANCZOS)).astype(np.float32)
    noisy = small + rng.normal(0.0, rng.uniform(2, 6), small.shape).astype(np.float32)
    image = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")
    caption_only = [o.name for o, (_, kind) in zip(named, layout, strict=True) if kind == "caption_only"]
    scene = Scene(f"{split}{index:07d}", split, drawn, caption_only, _caption(named))
    prompt = DETAIL_PROMPTS[int(rng.integers(len(DETAIL_PROMPTS)))]
    conv = [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": scene.caption}]
    for _ in range(cfg.qa_per_scene):
        q, a = _qa(rng, drawn, set(caption_only))
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    scene.conversations = conv
    return image, scene


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def build_scene_world(
    out_dir: str | Path,
    n_train: int,
    n_eval: int,
    seed: int = 0,
    cfg: SceneWorldConfig | None = None,
    *,
    pope_per_image: int = 3,
    samples_per_shard: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the scene world (see the module doc); returns the manifest (also ``out_dir/manifest.json``)."""
    cfg = cfg or SceneWorldConfig()
    out = Path(out_dir)
    truth: dict[str, dict[str, list[str]]] = {"train": {}, "eval": {}}
    counts: dict[str, Counter] = {"train": Counter(), "eval": Counter()}

    def samples(split: str, n: int) -> Iterator[ShardSample]:
        for i in range(n):
            image, scene = render_scene(seed, split, i, cfg)
            truth[split][scene.id] = scene.present
            c = counts[split]
            c["faint"] += sum(o.faint for o in scene.objects)
            c["caption_only"] += len(scene.caption_only)
            for name in scene.present:
                if name in PARTNER:
                    c["paired_object"] += 1
                    c["with_partner"] += PARTNER[name] in scene.present
            yield ShardSample(_jpeg(image), scene.caption, scene.annotation())

    shards = {split: [p.name for p in write_sample_shards(samples(split, n), out / split, total=n, desc=split,
                                                          samples_per_shard=samples_per_shard, progress=progress)]
              for split, n in (("train", n_train), ("eval", n_eval))}  # fmt: skip
    write_json_atomic(out / "eval" / "annotations.json", truth["eval"])
    (out / "pope").mkdir(parents=True, exist_ok=True)
    for mode in POPE_MODES:
        qs = pope_questions(truth["eval"], OBJECTS, mode, pope_per_image, seed, statistics=truth["train"])
        lines = [json.dumps({**q, "question": pope_question_text(q["object"])}) for q in qs]
        (out / "pope" / f"{mode}.jsonl").write_text("\n".join(lines) + "\n")
    manifest = {
        "seed": seed, "config": asdict(cfg), "objects": list(OBJECTS), "pairs": [list(p) for p in PAIRS],
        "synonyms": SYNONYMS, "counts": {"train": n_train, "eval": n_eval}, "shards": shards,
        "stats": {split: {**c, "partner_rate": c["with_partner"] / max(c["paired_object"], 1)}
                  for split, c in counts.items()},
    }  # fmt: skip
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
