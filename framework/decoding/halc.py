"""HALC: adaptive focal-contrast grounding + matching-score beam search (seed 000, chapter 6 and appendix A).

Legend: k = beams, n = FOVs, m = contrasted FOV pairs, V = vocabulary.

Per step and beam: the base next-token logits (the beam's cached forward on the whole image) give the greedy token.
If it is an object, attribute or relation word (:class:`WordKinds`), the detector locates the word in the image (a
box, or None: then a random box), n FOVs grow around it (:func:`~framework.decoding.fov.fov_boxes`), the LVLM runs
the beam's sequence on each FOV crop (batched into one forward, or one forward per FOV), and the m most divergent
FOV pairs contrasted both ways give 2m candidate distributions (:func:`~framework.decoding.contrast.focal_candidates`);
their argmax tokens are the beam's candidates. Otherwise the greedy token is its only candidate. Every (beam,
candidate) expansion is scored by ``matcher`` (the text so far against the original image; scalefirst's CLIP in
the benchmark) and the k best are kept (without a matcher: by the base log-probability).

Token types: no POS-tagger model is installable here (spaCy's and NLTK's models are downloads, not packages), so
:class:`WordKinds` classifies the words of a closed vocabulary, the scene world's by default (objects and their
synonyms; colours, sizes and counts as attributes; position words as relations). A tagger plugs in as any callable
``word -> kind | None``.
"""

from __future__ import annotations

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
"""(image reference, word) -> box [x0, y0, x1, y1] in the original image's pixels, or None (not found)."""
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


def scene_detector(annotations: dict[str, list[dict[str, Any]]]) -> Detector:
    """The scene world's detector: the annotated box of the named object (an oracle: perfect localization of what
    is drawn, None for what is not). Attribute and relation words are grounded on the object they describe only in
    a full HALC with a phrase-level detector; here they find nothing (random FOVs)."""

    def detect(image_id: Any, word: str) -> list[float] | None:
        for obj in annotations.get(image_id, []):
            if obj["name"] == word:
                return list(obj["box"])
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


@torch.no_grad()
def halc(
    model: nn.Module, tokenizer, prompt_1L: torch.Tensor, pixels_1: torch.Tensor, *, image_ref: Any,
    image_width: int, detector: Detector, word_kind: Callable[[str], Kind | None], cfg: HALCConfig = HALCConfig(),
    matcher: Matcher | None = None, max_new_tokens: int, eos_id: int, stats: dict[str, int] | None = None,
) -> list[int]:  # fmt: skip
    """HALC decoding of one prompt; returns the generated token ids (without EOS). ``image_width`` is the original
    image's width in pixels (detector boxes are scaled to the model's input); ``stats`` (if given) counts steps,
    grounded steps and FOV forwards."""
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    size = pixels_1.shape[-1]
    scale = size / image_width
    ids, mask = prompt_1L, torch.ones_like(prompt_1L)
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels_1, use_cache=True)
    seqs: list[list[int]] = [[]]
    logp_sum = torch.zeros(1, dtype=torch.float64)
    finished: list[tuple[list[int], float]] = []
    counts = stats if stats is not None else {}
    for key in ("steps", "grounded", "fov_forwards"):
        counts.setdefault(key, 0)
    for _ in range(max_new_tokens):
        logp = torch.log_softmax(out.logits[:, -1].double(), -1)
        cands: list[tuple[int, int]] = []
        for b in range(len(seqs)):
            g = int(logp[b].argmax())
            word = tokenizer.convert_ids_to_tokens(g)
            counts["steps"] += 1
            if g == eos_id or word_kind(word) is None:
                cands.append((b, g))
                continue
            counts["grounded"] += 1
            box = detector(image_ref, word)
            box = _scaled(box, scale) if box is not None else random_box(size, size, gen)
            crops = crop_resize(pixels_1[0], fov_boxes(box, size, size, cfg.fovs, cfg.expansion), size)
            counts["fov_forwards"] += 1 if cfg.batched else cfg.fovs
            f = fov_logits(model, ids[b : b + 1], crops, cfg.batched)
            toks = focal_candidates(f, m=cfg.pairs, alpha=cfg.alpha, beta=cfg.beta).argmax(-1).tolist()
            for t in dict.fromkeys(toks):  # unique, in candidate order
                cands.append((b, int(t)))
        totals = torch.tensor([float(logp_sum[b] + logp[b, t]) for b, t in cands], dtype=torch.float64)
        if matcher is not None:
            texts = [tokenizer.decode(seqs[b] + [t], skip_special_tokens=True) for b, t in cands]
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
