"""Hallucination evaluation of an LVLM on the scene world's held-out split: CHAIR on generated detailed
descriptions, POPE on the three question sets, response length; and a figure of examples with the hallucinated
object words marked.

Greedy decoding by default (the seed's protocol); beam search, VCD and HALC through ``decoding`` (framework/decoding).
Prompts of one kind have one token length (every object name is one word), so they are batched without padding;
mixed lengths are grouped by length.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from framework.data.clip.image_ops import preprocess
from framework.data.lvlm.chat import prompt_ids
from framework.data.lvlm.dataset import read_split
from framework.data.lvlm.scenes import DETAIL_PROMPTS, vocabulary
from framework.metrics.hallucination import POPE_MODES, chair, pope_metrics, words

DECODINGS = ("greedy", "beam", "vcd", "halc")
"""Decoding strategies of the evaluation (framework/decoding/)."""


@dataclass(kw_only=True)
class HALCContext:
    """What HALC needs per prompt beyond the model: the image each prompt is about, its detector and matcher."""

    refs: Sequence[Any]
    """Image reference of each prompt (the scene id)."""
    detector: Any
    matcher: Any | None
    image_width: int
    cfg: Any = None
    stats: dict[str, int] = field(default_factory=dict)


@torch.no_grad()
def generate(
    model, tokenizer, prompts: Sequence[list[int]], pixels: torch.Tensor, max_new_tokens: int, batch_size: int = 32,
    decoding: str = "greedy", beams: int = 3, halc: HALCContext | None = None,
) -> list[str]:  # fmt: skip
    """Continuations (decoded, special tokens dropped) of ``prompts`` [each a token id list] on ``pixels`` with
    ``decoding``: greedy, beam (``beams`` hypotheses), vcd (VCD's defaults) or halc (``halc`` context); beam and halc
    decode one prompt at a time."""
    from framework.decoding.halc import HALCConfig, WordKinds
    from framework.decoding.halc import halc as halc_decode
    from framework.decoding.loop import beam_search, greedy, vcd

    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    if decoding == "halc" and halc is None:
        raise ValueError("decoding='halc' needs a HALCContext (image references, detector, matcher)")
    kinds = WordKinds.scene_world() if decoding == "halc" else None
    model.eval()
    eos = tokenizer.eos_token_id
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(p)].append(i)
    out: list[str] = [""] * len(prompts)
    for idx in by_len.values():
        step = 1 if decoding in ("beam", "halc") else batch_size
        for s in range(0, len(idx), step):
            chunk = idx[s : s + step]
            ids = torch.tensor([prompts[i] for i in chunk])
            kw = dict(max_new_tokens=max_new_tokens, eos_id=eos)
            if decoding == "beam":
                gen = [beam_search(model, ids, pixels[chunk], k=beams, **kw)]
            elif decoding == "halc":
                assert halc is not None
                gen = [
                    halc_decode(
                        model,
                        tokenizer,
                        ids,
                        pixels[chunk],
                        image_ref=halc.refs[chunk[0]],
                        image_width=halc.image_width,
                        detector=halc.detector,
                        word_kind=kinds,
                        cfg=halc.cfg or HALCConfig(),
                        matcher=halc.matcher,
                        stats=halc.stats,
                        **kw,
                    )
                ]
            else:
                gen = (greedy if decoding == "greedy" else vcd)(model, ids, pixels[chunk], **kw)
            for i, row in zip(chunk, gen, strict=True):
                out[i] = tokenizer.decode(row, skip_special_tokens=True)
    return out


def evaluate_lvlm(
    model, tokenizer, scenes_dir: str | Path, *, image_size: int, image_tokens: int, limit: int | None = None,
    max_new_tokens: int = 80, batch_size: int = 32, decoding: str = "greedy", matcher: Any | None = None,
    halc_cfg: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """CHAIR_S / CHAIR_I / recall and mean response length (words) on the eval split's detailed descriptions,
    POPE per mode (questions on the first ``limit`` images); per-caption records under ``captions``; the wall time
    of the descriptions' and of POPE's decoding (``description_seconds``, ``pope_seconds``); with HALC, its counts
    and timings (framework.decoding.halc.STAT_KEYS) of the descriptions and of POPE (``halc_stats``,
    ``halc_pope_stats``).

    ``decoding="halc"`` grounds words with the scene world's detector (the annotated boxes) and keeps beams by
    ``matcher(samples)`` (a factory given the evaluated samples, returning a HALC matcher, e.g.
    :func:`framework.decoding.halc.clip_matcher`; None = by log-probability), with ``halc_cfg`` (a HALCConfig)."""
    samples = read_split(scenes_dir, "eval", limit)
    pixels = torch.stack([preprocess(s["image"], image_size) for s in samples])
    prompt = prompt_ids(DETAIL_PROMPTS[0], tokenizer, image_tokens)
    halc = None
    if decoding == "halc":
        from framework.decoding.halc import scene_detector

        objects = {s["id"]: s["annotation"]["objects"] for s in samples}
        halc = HALCContext(refs=[s["id"] for s in samples], detector=scene_detector(objects),
                           matcher=matcher(samples) if matcher is not None else None,
                           image_width=samples[0]["image"].width if samples else image_size, cfg=halc_cfg)  # fmt: skip
    t0 = time.perf_counter()
    captions = generate(model, tokenizer, [prompt] * len(samples), pixels, max_new_tokens, batch_size, decoding,
                        halc=halc)  # fmt: skip
    seconds = time.perf_counter() - t0
    truth = {s["id"]: [o["name"] for o in s["annotation"]["objects"]] for s in samples}
    res = chair({s["id"]: c for s, c in zip(samples, captions, strict=True)}, truth, vocabulary())
    out: dict[str, Any] = {k: res[k] for k in ("chair_s", "chair_i", "recall", "captions", "mentions")}
    out["length"] = sum(len(words(c)) for c in captions) / max(len(captions), 1)
    out["decoding"] = decoding
    out["description_seconds"] = seconds
    row = {s["id"]: i for i, s in enumerate(samples)}
    out["pope"] = {}
    pope_stats: dict[str, float] = {}
    t0 = time.perf_counter()
    for mode in POPE_MODES:
        path = Path(scenes_dir) / "pope" / f"{mode}.jsonl"
        qs = [q for q in map(json.loads, path.read_text().splitlines()) if q["image"] in row]
        pope_halc = None if halc is None else HALCContext(
            refs=[q["image"] for q in qs], detector=halc.detector, matcher=halc.matcher,
            image_width=halc.image_width, cfg=halc.cfg, stats=pope_stats)  # fmt: skip
        answers = generate(model, tokenizer, [prompt_ids(q["question"], tokenizer, image_tokens) for q in qs],
                           pixels[[row[q["image"]] for q in qs]], 6, batch_size, decoding, halc=pope_halc)  # fmt: skip
        out["pope"][mode] = pope_metrics(answers, [q["label"] for q in qs])
        out.setdefault("pope_answers", {})[mode] = [{**q, "answer": a} for q, a in zip(qs, answers, strict=True)]
    out["pope_seconds"] = time.perf_counter() - t0
    out["pope_f1"] = sum(m["f1"] for m in out["pope"].values()) / len(POPE_MODES)
    if halc is not None:
        out["halc_stats"], out["halc_pope_stats"] = halc.stats, pope_stats
    out["examples"] = [{"id": c["id"], "caption": cap, "truth": truth[c["id"]], "hallucinated": c["hallucinated"]}
                       for c, cap in zip(res["per_caption"], captions, strict=True)]  # fmt: skip
    return out


def plot_examples(examples: Sequence[dict[str, Any]], images: dict[str, Image.Image], path: str | Path, n: int = 6):
    """A grid of images with their generated captions, the hallucinated object words in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vocab = vocabulary()
    shown = list(examples)[:n]
    fig, axes = plt.subplots(len(shown), 2, figsize=(10, 1.9 * len(shown)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 5]})  # fmt: skip
    renderer = fig.canvas.get_renderer()
    for (ax_img, ax_txt), ex in zip(axes, shown, strict=True):
        ax_img.imshow(images[ex["id"]])
        ax_img.axis("off")
        ax_txt.axis("off")
        bad = set(ex["hallucinated"])
        x, y = 0.0, 0.85
        for w in ex["caption"].split():
            hit = vocab.mentions(w)
            color = "red" if hit and hit[0] in bad else "black"
            t = ax_txt.text(x, y, w + " ", color=color, fontsize=8, transform=ax_txt.transAxes,
                            fontweight="bold" if color == "red" else "normal")  # fmt: skip
            bb = t.get_window_extent(renderer=renderer).transformed(ax_txt.transAxes.inverted())
            x += bb.width
            if x > 0.95:
                x, y = 0.0, y - 0.2
        ax_txt.text(0.0, 0.05, "objects: " + ", ".join(ex["truth"]), fontsize=7, color="dimgray",
                    transform=ax_txt.transAxes)  # fmt: skip
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
