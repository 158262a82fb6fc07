"""The scene world as an indexed training set: every sample tokenized and its image preprocessed once, in memory,
and a deterministic global sample order, so that a data position is just an optimizer step.

Legend: N = samples, G = global batch (micro-batch x world size x accumulation), B = micro-batch per rank.

Why not the streaming loader: the scene world is small (tens of MB), and an indexed set makes the samples of
optimizer step s a function of (seed, s) alone: a run resumed at any world size sees exactly the samples an
uninterrupted run would, and 1 rank with the whole global batch sees the same samples as 2 ranks with half each.
Order: epoch e is a permutation of the kept samples drawn from (seed, e); step s takes positions [sG, (s+1)G) of
the concatenated epochs; micro-batch m of rank r takes rows [(mW + r)B, (mW + r + 1)B) of the step's G.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from framework.data.clip.image_ops import preprocess
from framework.data.lvlm.chat import IGNORE, collate, encode_conversation


def read_split(scenes_dir: str | Path, split: str = "eval", limit: int | None = None) -> list[dict[str, Any]]:
    """Samples of a scene-world split in key order: {"id", "image" (PIL), "caption", "annotation"}."""
    root = Path(scenes_dir) / split
    shards = sorted(root.glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no shards in {root} (write the scene world with `scalefirst make-scenes`)")
    out: list[dict[str, Any]] = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        for name in sorted(n for n in members if n.endswith(".json")):
            key = name[:-5]
            meta = json.loads(members[name])
            image = Image.open(io.BytesIO(members[f"{key}.jpg"])).convert("RGB")
            out.append(
                {"id": meta["id"], "image": image, "caption": members[f"{key}.txt"].decode(), "annotation": meta}
            )
            if limit is not None and len(out) >= limit:
                return out
    return out


@dataclass(kw_only=True)
class SceneTrainSet:
    """Tokenized conversations and preprocessed images of one split."""

    ids: list[str]
    input_ids: list[list[int]]
    labels: list[list[int]]
    pixels_NCHW: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        """Right-padded input_ids / labels / attention_mask of ``rows`` plus their ``pixel_values``."""
        out = collate([(self.input_ids[i], self.labels[i]) for i in rows], pad_id)
        out["pixel_values"] = self.pixels_NCHW[list(rows)]
        return out

    def supervised_tokens(self, rows: Sequence[int]) -> int:
        """Loss tokens of ``rows`` (every label that is not IGNORE; the first position never is one)."""
        return sum(sum(1 for t in self.labels[i] if t != IGNORE) for i in rows)


IMAGE_PREFIX = "<image>\n"


def shuffled_turns(conversation: Sequence[dict[str, str]], key: str) -> list[dict[str, str]]:
    """The conversation's exchanges (question + answer) in an order drawn from ``key``, the image placeholder moved
    to the new first question: LLaVA-Instruct conversations open with any question, and single-turn evaluation
    prompts (POPE: ``<image>\nIs there a ...?``) must be in distribution."""
    pairs = [list(conversation[i : i + 2]) for i in range(0, len(conversation), 2)]
    order = np.random.default_rng(zlib.crc32(key.encode())).permutation(len(pairs))
    out: list[dict[str, str]] = []
    for k, i in enumerate(order):
        q, a = pairs[int(i)]
        text = q["value"].removeprefix(IMAGE_PREFIX)
        out += [{**q, "value": IMAGE_PREFIX + text if k == 0 else text}, a]
    return out


def load_train_set(
    scenes_dir: str | Path, tokenizer, *, image_size: int, image_tokens: int, max_length: int, turns: str,
    split: str = "train", limit: int | None = None,
) -> SceneTrainSet:  # fmt: skip
    """The split's samples: ``turns="description"`` keeps the first exchange (image -> detailed description),
    ``"all"`` the whole conversation, ``"shuffled"`` the whole conversation in a per-sample order
    (:func:`shuffled_turns`).

    Raises:
        ValueError: a conversation longer than ``max_length`` (names the sample and the key to raise).
    """
    samples = read_split(scenes_dir, split, limit)
    ids, input_ids, labels = [], [], []
    for s in samples:
        conv = s["annotation"]["conversations"]
        if turns == "description":
            conv = conv[:2]
        elif turns == "shuffled":
            conv = shuffled_turns(conv, s["id"])
        elif turns != "all":
            raise ValueError(f"turns must be description, all or shuffled, got {turns!r}")
        try:
            x, y = encode_conversation(conv, tokenizer, image_tokens, max_length)
        except ValueError as e:
            raise ValueError(f"{scenes_dir}/{split} sample {s['id']}: {e} (raise data.max_length)") from e
        ids.append(s["id"])
        input_ids.append(x)
        labels.append(y)
    pixels = torch.stack([preprocess(s["image"], image_size) for s in samples])
    return SceneTrainSet(ids=ids, input_ids=input_ids, labels=labels, pixels_NCHW=pixels)


def step_rows(kept: Sequence[int], step: int, global_batch: int, seed: int) -> list[int]:
    """Sample indices (into the set) of optimizer step ``step``: positions [step G, (step+1) G) of the seeded
    epoch permutations of ``kept``."""
    n = len(kept)
    if n == 0:
        raise ValueError("no training samples left")
    rows: list[int] = []
    pos = step * global_batch
    while len(rows) < global_batch:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = perm[offset : offset + global_batch - len(rows)]
        rows += [kept[int(i)] for i in take]
        pos += len(take)
    return rows


def micro_rows(rows: Sequence[int], micro: int, rank: int, world_size: int, batch_size: int) -> list[int]:
    """Rank ``rank``'s rows of micro-batch ``micro`` of a step's global rows."""
    start = (micro * world_size + rank) * batch_size
    return list(rows[start : start + batch_size])
