"""Types every caption tokenizer shares: :class:`TokenBatch`, the :class:`Tokenizer` protocol, :func:`pack` (SOT +
ids + EOT, 0-padded) and the byte tokenizer's :func:`clean_caption`. Its own module so that the tokenizers
(:mod:`framework.data.clip.tokenizer`, :mod:`framework.data.clip.bpe`) import it and not each other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

_WS = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


@dataclass(frozen=True, slots=True)
class TokenBatch:
    tokens_BL: torch.Tensor
    """Token ids, int64 [B, L], 0-padded after EOT."""
    eot_index_B: torch.Tensor
    """Position of EOT per row, int64 [B] (the text tower reads its output there)."""


class Tokenizer(Protocol):
    vocab_size: int
    context_length: int

    def encode(self, text: str) -> list[int]:
        """Ids of the cleaned text without SOT/EOT."""
        ...

    def __call__(self, texts: Sequence[str]) -> TokenBatch: ...


def pack(ids: Sequence[Sequence[int]], sot: int, eot: int, context_length: int) -> TokenBatch:
    """SOT + ids truncated to fit + EOT, 0-padded to ``context_length``."""
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (SOT and EOT), got {context_length}")
    rows: list[list[int]] = []
    eot_index: list[int] = []
    for row in ids:
        seq = [sot, *row[: context_length - 2], eot]
        eot_index.append(len(seq) - 1)
        seq.extend([0] * (context_length - len(seq)))
        rows.append(seq)
    # One tensor from the nested list: a tensor per row costs more than the BPE of a short caption.
    tokens = torch.tensor(rows, dtype=torch.long).reshape(len(rows), context_length)
    return TokenBatch(tokens, torch.tensor(eot_index, dtype=torch.long))
