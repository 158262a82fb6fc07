"""Object-hallucination metrics of captioning LVLMs: CHAIR (Rohrbach et al. 2018) and POPE (Li et al. 2023).

CHAIR, over an :class:`ObjectVocabulary` (canonical objects and the phrases that name them):
- a caption's *mentions* are found left to right, longest phrase first ("teddy bear" before "bear"), on lower-case
  words compared as written or singularized (inflect: "men" -> man, "knives" -> knife);
- each mention counts (CHAIR's convention: "two dogs ... the dog" is two mentions of dog);
- CHAIR_I = hallucinated mentions / all mentions; CHAIR_S = captions with at least one hallucinated mention /
  captions; recall = annotated objects a caption mentions / annotated objects (unique per image, summed).
POPE: questions "Is there a <object> in the image?", positives drawn from the image's annotated objects, as many
negatives from the absent ones: ``random`` (uniform), ``popular`` (the most frequent objects of the annotation
statistics) or ``adversarial`` (the objects that co-occur most with the image's own). Metrics with "yes" as the
positive class: accuracy, precision, recall, F1, yes-ratio; an answer with neither yes nor no counts as "no" and is
counted as unparsed.
Vocabularies: any mapping (the scene world's), or COCO's from an ``instances_*.json`` with the COCO-80 synonyms of
:mod:`framework.metrics.coco_objects`.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from framework.metrics.coco_objects import COCO_SYNONYMS

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
PopeMode = Literal["random", "popular", "adversarial"]
POPE_MODES: tuple[PopeMode, ...] = ("random", "popular", "adversarial")


@functools.lru_cache(maxsize=1)
def _inflect():
    import inflect

    return inflect.engine()


@functools.lru_cache(maxsize=65536)
def _forms(word: str) -> frozenset[str]:
    """The word as written and, if inflect reads it as a plural, its singular."""
    singular = _inflect().singular_noun(word) if len(word) > 2 else False
    return frozenset({word, singular}) if singular else frozenset({word})


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class ObjectVocabulary:
    """Canonical object names -> extra phrases naming them (the name itself always names it)."""

    synonyms: Mapping[str, Sequence[str]]
    _phrases: dict[tuple[str, ...], str] = field(init=False, repr=False, compare=False)
    _longest: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        phrases: dict[tuple[str, ...], str] = {}
        for name, extra in self.synonyms.items():
            for phrase in (name, *extra):
                key = tuple(words(phrase))
                if not key:
                    raise ValueError(f"object {name!r}: phrase {phrase!r} has no words")
                other = phrases.get(key)
                if other is not None and other != name:
                    raise ValueError(f"phrase {phrase!r} names two objects: {other!r} and {name!r}")
                phrases[key] = name
        object.__setattr__(self, "_phrases", phrases)
        object.__setattr__(self, "_longest", max((len(k) for k in phrases), default=0))

    @property
    def objects(self) -> list[str]:
        return list(self.synonyms)

    def mentions(self, text: str) -> list[str]:
        """Canonical objects named in ``text``, one entry per mention, in order."""
        toks = words(text)
        forms = [_forms(t) for t in toks]
        out, i = [], 0
        while i < len(toks):
            for n in range(min(self._longest, len(toks) - i), 0, -1):
                # The phrase's last word may be plural ("traffic lights"); earlier words as written.
                head = tuple(toks[i : i + n - 1])
                hit = next((self._phrases[(*head, f)] for f in forms[i + n - 1] if (*head, f) in self._phrases), None)
                if hit is not None:
                    out.append(hit)
                    i += n
                    break
            else:
                i += 1
        return out

    @classmethod
    def from_coco(cls, instances_json: str | Path, synonyms: Mapping[str, Sequence[str]] = COCO_SYNONYMS):
        """The categories of a COCO-format annotation file, each with its synonyms (none if not in ``synonyms``)."""
        categories = _read_coco(instances_json)["categories"]
        return cls({c["name"]: tuple(synonyms.get(c["name"], ())) for c in categories})


def _read_coco(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable COCO-format JSON file ({e})") from e
    for key in ("categories", "annotations"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: COCO-format file without a {key!r} list")
    for i, c in enumerate(data["categories"]):
        if "id" not in c or "name" not in c:
            raise ValueError(f"{path}: categories[{i}] needs 'id' and 'name'")
    return data


def coco_ground_truth(instances_json: str | Path) -> dict[int, set[str]]:
    """image id -> the category names annotated in it (images listed without annotations map to an empty set)."""
    data = _read_coco(instances_json)
    names = {c["id"]: c["name"] for c in data["categories"]}
    out: dict[int, set[str]] = {img["id"]: set() for img in data.get("images", [])}
    for i, a in enumerate(data["annotations"]):
        if a.get("category_id") not in names:
            raise ValueError(f"{instances_json}: annotations[{i}] has unknown category_id {a.get('category_id')!r}")
        out.setdefault(a["image_id"], set()).add(names[a["category_id"]])
    return out


def chair(
    captions: Mapping[Hashable, str], ground_truth: Mapping[Hashable, Collection[str]], vocab: ObjectVocabulary
) -> dict[str, Any]:
    """CHAIR_S, CHAIR_I and recall of ``captions`` (id -> text) against ``ground_truth`` (id -> objects), with the
    per-caption mentions and hallucinations."""
    per_caption, n_mentions, n_halluc, n_bad, n_gt, n_found = [], 0, 0, 0, 0, 0
    for key, text in captions.items():
        if key not in ground_truth:
            raise KeyError(f"caption {key!r} has no ground-truth objects")
        truth = set(ground_truth[key])
        mentioned = vocab.mentions(text)
        hallucinated = [m for m in mentioned if m not in truth]
        n_mentions += len(mentioned)
        n_halluc += len(hallucinated)
        n_bad += bool(hallucinated)
        n_gt += len(truth)
        n_found += len(truth & set(mentioned))
        per_caption.append({"id": key, "mentioned": mentioned, "hallucinated": hallucinated})
    n = len(per_caption)
    return {
        "chair_s": n_bad / n if n else 0.0,
        "chair_i": n_halluc / n_mentions if n_mentions else 0.0,
        "recall": n_found / n_gt if n_gt else 0.0,
        "captions": n,
        "mentions": n_mentions,
        "hallucinated_mentions": n_halluc,
        "per_caption": per_caption,
    }


def parse_yes_no(answer: str) -> bool | None:
    """The first "yes" or "no" word of an answer (None if neither occurs)."""
    for w in words(answer):
        if w == "yes":
            return True
        if w in ("no", "not"):
            return False
    return None


def pope_metrics(answers: Sequence[str | bool], labels: Sequence[bool]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio with "yes" as the positive class."""
    if len(answers) != len(labels):
        raise ValueError(f"{len(answers)} answers for {len(labels)} questions")
    parsed = [a if isinstance(a, bool) else parse_yes_no(a) for a in answers]
    pred = np.array([bool(p) for p in parsed])
    y = np.array(labels, dtype=bool)
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    n = len(y)
    return {
        "accuracy": float((pred == y).mean()) if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": float(pred.mean()) if n else 0.0,
        "questions": n,
        "unparsed": sum(p is None for p in parsed),
    }


def pope_questions(
    ground_truth: Mapping[Hashable, Collection[str]],
    objects: Sequence[str],
    mode: PopeMode,
    per_image: int = 3,
    seed: int = 0,
    statistics: Mapping[Hashable, Collection[str]] | None = None,
) -> list[dict[str, Any]]:
    """POPE's balanced yes/no questions: per image up to ``per_image`` annotated objects (label True) and as many
    absent ones (label False) chosen by ``mode``; frequencies and co-occurrences come from ``statistics`` (default:
    ``ground_truth``, e.g. pass the training annotations). Deterministic given ``seed``."""
    if mode not in POPE_MODES:
        raise ValueError(f"unknown POPE mode {mode!r}; choose one of {', '.join(POPE_MODES)}")
    stats = ground_truth if statistics is None else statistics
    freq = Counter(o for objs in stats.values() for o in set(objs))
    co: dict[str, Counter] = {o: Counter() for o in objects}
    for objs in stats.values():
        for a in set(objs):
            for b in set(objs):
                if a != b and a in co:
                    co[a][b] += 1
    rng = np.random.default_rng(seed)
    out = []
    for key, truth_c in ground_truth.items():
        truth = sorted(set(truth_c))
        absent = [o for o in objects if o not in set(truth)]
        k = min(per_image, len(truth), len(absent))
        if k == 0:
            continue
        positives = list(rng.choice(truth, size=k, replace=False))
        if mode == "random":
            negatives = list(rng.choice(absent, size=k, replace=False))
        else:
            if mode == "popular":
                score = {o: freq[o] for o in absent}
            else:
                score = {o: sum(co[t][o] for t in truth if t in co) for o in absent}
            # Ties broken by the vocabulary's order (stable sort), so the result does not depend on set order.
            negatives = sorted(absent, key=lambda o: -score[o])[:k]
        out += [{"image": key, "object": str(o), "label": True, "mode": mode} for o in positives]
        out += [{"image": key, "object": str(o), "label": False, "mode": mode} for o in negatives]
    return out


def pope_question_text(obj: str) -> str:
    return f"Is there a {obj} in the image?"
