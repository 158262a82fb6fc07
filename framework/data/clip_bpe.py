"""CLIP's byte-level BPE tokenizer, read from its merges file (``bpe_simple_vocab_16e6.txt.gz``).

The same algorithm and ids as OpenAI CLIP's ``SimpleTokenizer`` (and open_clip's):

* every UTF-8 byte is mapped to a printable unicode character (:func:`bytes_to_unicode`), so any text is
  representable and no word is ever out of vocabulary: a word without merges falls back to its byte characters;
* the merges file has a header line, then one merge per line (``"a b"``); CLIP uses lines
  ``[1 : 49152 - 256 - 2 + 1]`` (48 894 merges);
* vocabulary = the 256 byte characters, the same with ``</w>`` (end of word), every merge joined, then
  ``<|startoftext|>`` and ``<|endoftext|>`` (49 408 ids with CLIP's file);
* text is pre-tokenized with CLIP's regex (contractions, letter runs, single digits, other symbol runs), each
  piece's bytes are merged greedily by merge rank.

Cleaning differs from CLIP in one documented way: CLIP runs ``ftfy.fix_text`` (mojibake repair, not installed
here); we apply ``html.unescape`` twice as CLIP does, then :func:`framework.data.tokenizer.clean_caption`
(whitespace collapsed, lower-cased). On clean text the ids are identical.

The pattern needs ``\\p{L}``/``\\p{N}`` (the third-party ``regex`` module). Without it we fall back to the
standard ``re`` with ``[^\\W\\d_]+`` for letters and ``\\d`` for numbers: identical on letters and decimal digits,
but other numeric characters (``²``, ``½``, roman numerals) then land in the symbol class.
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from framework.data.tokenizer import TokenBatch, clean_caption, pack

# Standard-library equivalent of CLIP's pattern (importable so a test can check both agree on ordinary text).
RE_FALLBACK_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+"""

try:
    import regex as _re_mod

    _PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
except ImportError:  # pragma: no cover - exercised only where `regex` is missing
    import re as _re_mod

    _PATTERN = RE_FALLBACK_PATTERN

CLIP_NUM_MERGES = 49152 - 256 - 2  # merges CLIP reads: lines [1 : 49152 - 256 - 2 + 1]
SOT_TOKEN, EOT_TOKEN = "<|startoftext|>", "<|endoftext|>"
_CACHE_WORDS = 100_000


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable unicode character: printable Latin-1 bytes map to themselves, the rest to 256 + n."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def read_merges(path: str | Path, max_merges: int = CLIP_NUM_MERGES) -> list[tuple[str, str]]:
    """Merges of a CLIP BPE file (gzip or plain text): header line skipped, at most ``max_merges`` read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BPE merges file not found: {path} (CLIP's bpe_simple_vocab_16e6.txt.gz)")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").split("\n")
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if len(merges) == max_merges:
            break
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}, line {lineno}: a merge is two symbols separated by a space, got {line!r}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise ValueError(f"{path}: no merges after the header line")
    return merges


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:], strict=False))


class ClipBPETokenizer:
    """CLIP's BPE: ``encode`` gives ids without SOT/EOT; ``__call__`` packs a batch (see :func:`pack`).

    Example (CLIP's file): ``ClipBPETokenizer("bpe_simple_vocab_16e6.txt.gz", 77)(["a photo of a cat"])``.
    """

    def __init__(self, vocab_path: str | Path, context_length: int = 77) -> None:
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()
        merges = read_merges(vocab_path)
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder[SOT_TOKEN], self.encoder[EOT_TOKEN]
        self.vocab_size = len(vocab)
        self._pattern = _re_mod.compile(_PATTERN, _re_mod.IGNORECASE)
        self._cache: dict[str, tuple[str, ...]] = {}

    def bpe(self, token: str) -> tuple[str, ...]:
        """Merge the byte characters of one pre-token (the last one marked ``</w>``) by rank, lowest first."""
        if token in (SOT_TOKEN, EOT_TOKEN):
            return (token,)  # as CLIP: a literal special token in the text maps to its id
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = (*token[:-1], token[-1] + "</w>")
        pairs = _pairs(word)
        while pairs:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if word[i] == first and i + 1 < len(word) and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            pairs = _pairs(word) if len(word) > 1 else set()
        if len(self._cache) >= _CACHE_WORDS:
            self._cache.clear()  # bounded memory on open-vocabulary caption streams
        self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Ids of the cleaned text without SOT/EOT."""
        text = clean_caption(html.unescape(html.unescape(text)))
        ids: list[int] = []
        for piece in self._pattern.findall(text):
            chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(chars))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` up to the first EOT (SOT skipped); word ends become spaces."""
        pieces = []
        for i in ids:
            if i == self.sot:
                continue
            if i == self.eot:
                break
            if i not in self.decoder:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            pieces.append(self.decoder[i])
        raw = bytearray(self.byte_decoder[c] for c in "".join(pieces))
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, texts: Sequence[str]) -> TokenBatch:
        return pack([self.encode(t) for t in texts], self.sot, self.eot, self.context_length)
