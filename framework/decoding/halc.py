"""HALC: adaptive focal-contrast grounding + matching-score beam search (seed 000, chapter 6 and appendix A).

Legend: k = beams, n = FOVs, m = contrasted FOV pairs, V = vocabulary.

Per step and beam: the base next-token logits (the beam's cached forward on the whole image) give the greedy token.
If it is a word of a kind HALC grounds (``HALCConfig.kinds``: object, attribute, relation; :class:`WordKinds`), the
detector locates it in the image: a box, or None (then a random box). ``HALCConfig.ground`` says whether the
detector is queried with the word alone or with the phrase it ends (:func:`grounding_query`). n FOVs grow around
the box (:func:`~framework.decoding.fov.fov_boxes`), the LVLM runs the beam's sequence on each FOV crop (batched
into one forward, or one forward per FOV), and the m most divergent FOV pairs contrasted both ways give 2m
candidate distributions (:func:`~framework.decoding.contrast.focal_candidates`); their argmax tokens are the beam's
candidates. Otherwise the greedy token is its only candidate. Every (beam, candidate) expansion is scored by
``matcher`` (the text so far against the original image; scalefirst's CLIP in the benchmark) and the k best are
kept (without a matcher: by the base log-probability). A step with no choice to make (at most k expansions, none
ending the text) keeps them all without scoring.

Cost accounting: ``stats`` counts steps, grounded steps, FOV forwards and matcher calls, and times the base (cached)
forwards, the FOV forwards, the detector and the matcher (seconds), the terms of the thesis' cost model (eq. 6.5).

Token types: no POS-tagger model is installable here (spaCy's and NLTK's models are downloads, not packages), so
:class:`WordKinds` classifies the words of a closed vocabulary, the scene world's by default (objects and their
synonyms; colours, sizes and counts as attributes; position words as relations). A tagger plugs in as any callable
``word -> kind | None``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from framework.decoding.contrast import focal_candidates
from framework.decoding.fov import crop_resize, fov_boxes, random_box
from framework.decoding.loop import advance_beams

Kind = Literal["object", "attribute", "relation"]
Detector = Callable[[Any, str], "list[float] | None"]
"""(image reference, query text) -> box [x0, y0, x1, y1] in the original image's pixels, or None (not found)."""
Matcher = Callable[[Any, list[str]], torch.Tensor]
"""(image reference, texts) -> one matching score per text (higher = better match)."""


@dataclass(kw_only=True, frozen=True)
class HALCConfig:
    fovs: int = 4
    """n: FOVs per grounded token."""
    expansion: float = 0.6
    """lambda: each FOV's sides are (1 + lambda) times the previous one's."""
    pairs: int = 6
    """m: most divergent FOV pairs contrasted (both ways: 2m candidates)."""
    alpha: float = 0.05
    """Contrast strength (1 + alpha) f_i - alpha f_j."""
    beta: float = 0.1
    """Adaptive plausibility: tokens with p >= beta max p under the first FOV of a contrast."""
    beams: int = 1
    """k: beams kept by the matching score (the thesis' appendix: 1; ablation: 2)."""
    batched: bool = True
    """Run the n FOV passes as one batched forward (False: one forward per FOV)."""
    seed: int = 0
    """Seed of the random FOVs used when the detector finds nothing."""
    ground: Literal["word", "phrase"] = "phrase"
    """The detector's query: the word alone (the official code's entity query), or the phrase it ends (the thesis,
    section 6.4.2: zero-shot detectors ground adjective and prepositional phrases too), see :func:`grounding_query`."""

    kinds: tuple[Kind, ...] = ("object", "attribute", "relation")
    """The word kinds HALC grounds (the thesis: all three; the official code's tagger filter: nouns only, i.e.
    ``("object",)``)."""

    def __post_init__(self) -> None:
        if self.ground not in ("word", "phrase"):
            raise ValueError(f"HALCConfig.ground must be 'word' or 'phrase', got {self.ground!r}")
        bad = set(self.kinds) - {"object", "attribute", "relation"}
        if bad:
            raise ValueError(f"HALCConfig.kinds: unknown word kinds {sorted(bad)} (object, attribute, relation)")


class WordKinds:
    """Object / attribute / relation words of a closed vocabulary (the scene world's by default)."""

    def __init__(self, objects: Sequence[str], attributes: Sequence[str], relations: Sequence[str]) -> None:
        self.kinds: dict[str, Kind] = {w: "relation" for w in relations}
        self.kinds |= {w: "attribute" for w in attributes}
        self.kinds |= {w: "object" for w in objects}

    @classmethod
    def scene_world(cls) -> WordKinds:
        from framework.data.clip.offline_images import COLORS
        from framework.data.lvlm.scenes import COUNT_WORDS, OBJECTS, SIZES, SYNONYMS

        objects = [*OBJECTS, *(s for syn in SYNONYMS.values() for s in syn)]
        relations = ["top", "bottom", "left", "right", "center", "corner", "middle"]
        return cls(objects, [*COLORS, *SIZES, *COUNT_WORDS[1:]], relations)

    def __call__(self, word: str) -> Kind | None:
        return self.kinds.get(word.strip().lower())


PHRASE_BREAKS = frozenset({",", ".", ":", ";", "!", "?", "and", "or", "a", "an"})
"""Words that end the phrase before them (punctuation, conjunctions, indefinite articles)."""


def grounding_query(text: str, word: str, ground: str = "phrase") -> str:
    """What the detector is asked for when ``word`` would follow ``text``: the word, or the phrase it ends (the words
    after the last of ``PHRASE_BREAKS``): after "two objects : a small red", the word "star" is queried as "small red
    star", and after "a small red star in the top", "right" as "small red star in the top right"."""
    if ground == "word":
        return word
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    cut = max((i for i, w in enumerate(words) if w in PHRASE_BREAKS), default=-1)
    return " ".join([*words[cut + 1 :], word])


POSITION_WORDS = {"top": "top", "bottom": "bottom", "left": "left", "right": "right", "center": "center",
                  "middle": "center"}  # fmt: skip


def scene_detector(annotations: dict[str, list[dict[str, Any]]]) -> Detector:
    """The scene world's detector, an oracle over the annotations (perfect localization of what is drawn).

    A query (a word or a phrase, :func:`grounding_query`) is parsed into an object name (synonyms included), colours,
    sizes and position words; each drawn object scores 2 for its name and 1 for each of its colour, size and cell
    (all the query's position words among its cell's) that the query names. The box of the best-scoring object
    (ties: the first in the annotation) is returned; with no match, a count word or "objects" grounds on the union
    of all objects' boxes, and anything else is not found (None). A hallucinated "star" is therefore not found as a
    word, but "small red star" finds the small red object that is there, as a zero-shot detector with a low
    threshold grounds a phrase on its best partial match (the thesis, section 6.4.2)."""
    from framework.data.lvlm.scenes import COUNT_WORDS, OBJECTS, SYNONYMS

    canon = {o: o for o in OBJECTS} | {s: o for o, syn in SYNONYMS.items() for s in syn}
    counts = {*COUNT_WORDS[1:], "objects", "object"}

    def detect(image_id: Any, query: str) -> list[float] | None:
        objects = annotations.get(image_id, [])
        ws = re.findall(r"\w+", query.lower())
        names = {canon[w] for w in ws if w in canon}
        places = {POSITION_WORDS[w] for w in ws if w in POSITION_WORDS}

        def score(obj: dict[str, Any]) -> int:
            cell = set(str(obj.get("cell", "")).split())
            return (2 * (obj["name"] in names) + (obj.get("color") in ws) + (obj.get("size") in ws)
                    + bool(places and places <= cell))  # fmt: skip

        best = max(objects, key=score, default=None)
        if best is not None and score(best) > 0:
            return list(best["box"])
        if objects and counts & set(ws):
            boxes = [o["box"] for o in objects]
            return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                    max(b[3] for b in boxes)]  # fmt: skip
        return None

    return detect


def _scaled(box: list[float], scale: float) -> list[float]:
    return [v * scale for v in box]


@torch.no_grad()
def fov_logits(model: nn.Module, ids_1T: torch.Tensor, crops_nCHW: torch.Tensor, batched: bool) -> torch.Tensor:
    """[n, V] next-token logits of one sequence on each FOV crop (no cache: each crop is another image)."""
    n = crops_nCHW.shape[0]
    if batched:
        ids = ids_1T.expand(n, -1)
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=crops_nCHW,
                     use_cache=False).logits[:, -1].float()  # fmt: skip
    return torch.cat([model(input_ids=ids_1T, attention_mask=torch.ones_like(ids_1T), pixel_values=c[None],
                            use_cache=False).logits[:, -1].float() for c in crops_nCHW])  # fmt: skip


def keep_best(candidates: list[tuple[int, int]], scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k best-scoring candidates, best first (ties: earlier candidate first)."""
    order = sorted(range(len(candidates)), key=lambda i: (-float(scores[i]), i))
    return order[:k]


STAT_KEYS = ("steps", "grounded", "fov_forwards", "matcher_calls", "base_seconds", "fov_seconds",
             "detector_seconds", "matcher_seconds")  # fmt: skip
"""What ``halc(stats=...)`` accumulates: counts, and seconds spent per part."""


class _Clock:
    """Adds the wall time of a ``with`` block to ``stats[key]``."""

    def __init__(self, stats: dict[str, float], key: str) -> None:
        self.stats, self.key = stats, key

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.stats[self.key] += time.perf_counter() - self.t0


@torch.no_grad()
def halc(
    model: nn.Module, tokenizer, prompt_1L: torch.Tensor, pixels_1: torch.Tensor, *, image_ref: Any,
    image_width: int, detector: Detector, word_kind: Callable[[str], Kind | None], cfg: HALCConfig = HALCConfig(),
    matcher: Matcher | None = None, max_new_tokens: int, eos_id: int, stats: dict[str, float] | None = None,
) -> list[int]:  # fmt: skip
    """HALC decoding of one prompt; returns the generated token ids (without EOS). ``image_width`` is the original
    image's width in pixels (detector boxes are scaled to the model's input); ``stats`` (if given) accumulates
    :data:`STAT_KEYS`. Token types are judged on whole decoded tokens (a word-level tokenizer's words; a subword
    tokenizer's pieces are judged piece by piece)."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    size = pixels_1.shape[-1]
    scale = size / image_width
    counts = stats if stats is not None else {}
    for key in STAT_KEYS:
        counts.setdefault(key, 0)
    ids, mask = prompt_1L, torch.ones_like(prompt_1L)
    with _Clock(counts, "base_seconds"):
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels_1, use_cache=True)
    seqs: list[list[int]] = [[]]
    logp_sum = torch.zeros(1, dtype=torch.float64)
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_new_tokens):
        logp = torch.log_softmax(out.logits[:, -1].double(), -1)
        cands: list[tuple[int, int]] = []
        for b in range(len(seqs)):
            g = int(logp[b].argmax())
            word = tokenizer.decode([g]).strip()
            counts["steps"] += 1
            if g == eos_id or word_kind(word) not in cfg.kinds:
                cands.append((b, g))
                continue
            counts["grounded"] += 1
            query = grounding_query(tokenizer.decode(seqs[b], skip_special_tokens=True), word, cfg.ground)
            with _Clock(counts, "detector_seconds"):
                box = detector(image_ref, query)
            box = _scaled(box, scale) if box is not None else random_box(size, size, gen)
            crops = crop_resize(pixels_1[0], fov_boxes(box, size, size, cfg.fovs, cfg.expansion), size)
            counts["fov_forwards"] += 1 if cfg.batched else cfg.fovs
            with _Clock(counts, "fov_seconds"):
                f = fov_logits(model, ids[b : b + 1], crops, cfg.batched)
            toks = focal_candidates(f, m=cfg.pairs, alpha=cfg.alpha, beta=cfg.beta).argmax(-1).tolist()
            for t in dict.fromkeys(toks):  # unique, in candidate order
                cands.append((b, int(t)))
        totals = torch.tensor([float(logp_sum[b] + logp[b, t]) for b, t in cands], dtype=torch.float64)
        choice = len(cands) > cfg.beams or any(t == eos_id for _, t in cands)
        if matcher is not None and choice:
            texts = [tokenizer.decode(seqs[b] + [t], skip_special_tokens=True) for b, t in cands]
            counts["matcher_calls"] += 1
            with _Clock(counts, "matcher_seconds"):
                scores = matcher(image_ref, texts)
        else:
            scores = totals
        alive = []
        for i in keep_best(cands, scores, cfg.beams):
            b, t = cands[i]
            if t == eos_id:
                finished.append((seqs[b], float(scores[i])))
            else:
                alive.append((b, t, float(totals[i])))
        if len(finished) >= cfg.beams or not alive:
            break
        with _Clock(counts, "base_seconds"):
            seqs, logp_sum, ids, out = advance_beams(model, seqs, ids, out, alive, pixels_1)
    else:
        finished += [(s, float("-inf")) for s in seqs]
    if not finished:
        finished = [(s, float("-inf")) for s in seqs]
    return finished[0][0] if cfg.beams == 1 else max(finished, key=lambda f: f[1])[0]


def clip_matcher(clip: nn.Module, tokenizer, images: dict[Any, Any], image_size: int) -> Matcher:
    """HALC's matching score with scalefirst's CLIP: cosine between the original image's and each text's embedding
    (``images``: image reference -> PIL image; embeddings cached per image)."""
    from framework.data.clip.image_ops import preprocess

    clip.eval()
    cache: dict[Any, torch.Tensor] = {}

    @torch.no_grad()
    def match(ref: Any, texts: list[str]) -> torch.Tensor:
        if ref not in cache:
            cache[ref] = clip.encode_image(preprocess(images[ref], image_size)[None])[0]
        batch = tokenizer(texts)
        return clip.encode_text(batch.tokens_BL, batch.eot_index_B) @ cache[ref]

    return match
