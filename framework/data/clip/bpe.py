"""CLIP's byte-level BPE tokenizer, id for id open_clip's ``tokenize`` (``SimpleTokenizer``, clean ``lower``).

Pipeline (each step as open_clip 3.3.0 does it; ``tests/unit/test_tokenizer.py`` compares the ids with open_clip's
on a few hundred hazardous captions):

1. Cleaning (:func:`clip_clean`): ``ftfy.fix_text`` (mojibake, ligatures, curly quotes, full-width forms, control
   characters, NFC), ``html.unescape`` twice (so ``&amp;amp;`` becomes ``&``), strip, whitespace runs collapsed to one
   space, lower-cased.
2. Pre-tokenization with CLIP's pattern (the third-party ``regex`` module, case-insensitive): the two special tokens,
   contractions, letter runs, single digits, other symbol runs; whitespace is dropped. A literal
   ``<start_of_text>`` / ``<end_of_text>`` in a caption that the pattern matches as a piece becomes the special
   id, as in open_clip (it is not matched inside a symbol run, e.g. ``!<end_of_text>``). Note that open_clip names
   them ``<start_of_text>``/``<end_of_text>``; OpenAI's original CLIP names them ``<|startoftext|>``/
   ``<|endoftext|>`` (same ids), which open_clip, and so this tokenizer, treats as ordinary text.
3. Byte-level BPE of each piece: every UTF-8 byte mapped to a printable character (:func:`bytes_to_unicode`), the
   last one marked ``</w>``, pairs merged by rank. Done by Hugging Face ``tokenizers`` (a ``BPE`` model with
   ``end_of_word_suffix="</w>"`` behind a ``ByteLevel`` pre-tokenizer), fed the pieces of step 2.
4. Packing (:func:`framework.data.clip.text.pack`): SOT + ids + EOT, 0-padded; a caption longer than the context
   keeps its first ``context_length - 2`` ids and ends with EOT (what open_clip's truncation gives).

Why step 2 is not done by ``tokenizers`` too: its ``Split`` pre-tokenizer (Oniguruma, even with ``(?i)``) disagrees
with the ``regex`` module on case-insensitive matching (e.g. U+0345, which open_clip's pattern drops) and on code
points their Unicode databases classify differently: probing every code point in five short contexts, 5,567 of
972,480 strings split differently. Its added-token matching would also find ``<end_of_text>`` inside symbol
runs. The pattern costs little in Python; the merges are the work.

Vocabulary (49 408 ids with CLIP's file): the 256 byte characters, the same with ``</w>``, the first
``49152 - 256 - 2`` merges of the file joined, then ``<start_of_text>`` (49406) and ``<end_of_text>`` (49407).
The merges file ships in the open-clip-torch wheel (``open_clip/bpe_simple_vocab_16e6.txt.gz``); without
``data.vocab_path`` that copy is used (:func:`default_vocab_path`, found without importing ``open_clip``).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import models, pre_tokenizers

from framework.data.clip.text import TokenBatch, pack

CLIP_NUM_MERGES = 49152 - 256 - 2  # merges CLIP reads: lines [1 : 49152 - 256 - 2 + 1]
SOT_TOKEN, EOT_TOKEN = "<start_of_text>", "<end_of_text>"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"

_PATTERN = regex.compile(
    rf"""{SOT_TOKEN}|{EOT_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+""", regex.IGNORECASE
)
# Text of these characters only is left unchanged by ftfy.fix_text and html.unescape up to whitespace, which the
# cleaning collapses anyway: ASCII cannot be mojibake, and every fixer that can touch ASCII needs a character not
# in this set ('&' for entities, ESC for terminal escapes, other C0 controls, which ftfy deletes; \r becomes \n).
# Most captions are such text, and ftfy costs more than the rest of the tokenizer.
_FTFY_INVARIANT = re.compile(r"[\t\n\r\x20-\x25\x27-\x7e]*")


def clip_clean(text: str) -> str:
    """open_clip's ``lower`` cleaning: ``ftfy.fix_text``, ``html.unescape`` twice, whitespace collapsed, lower-cased.

    Example::

        >>> clip_clean("  Ã‰cole “ﬁne” &amp;amp;  ART ")
        'école "fine" & art'
    """
    if not _FTFY_INVARIANT.fullmatch(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def default_vocab_path() -> Path | None:
    """``bpe_simple_vocab_16e6.txt.gz`` of the installed open-clip-torch (``open_clip`` is located, not imported:
    its ``__init__`` imports torchvision), or None when it is not installed."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / VOCAB_FILE
    return path if path.is_file() else None


def resolve_vocab_path(vocab_path: str | Path | None) -> Path:
    """``vocab_path``, or :func:`default_vocab_path` when it is None or empty.

    Raises:
        ValueError: no ``vocab_path`` and open-clip-torch is not installed (names ``data.vocab_path``).
    """
    if vocab_path:
        return Path(vocab_path)
    path = default_vocab_path()
    if path is None:
        raise ValueError(
            f"data.vocab_path is not set and open-clip-torch (which ships {VOCAB_FILE}) is not installed: set "
            f"data.vocab_path to CLIP's {VOCAB_FILE}, or run `bash launch/setup.sh`"
        )
    return path


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
        raise FileNotFoundError(f"BPE merges file not found: {path} (CLIP's {VOCAB_FILE})")
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


class ClipBPETokenizer:
    """CLIP's BPE: ``encode`` gives ids without SOT/EOT; ``__call__`` packs a batch (see :func:`pack`).

    Example (open_clip's file, found when ``vocab_path`` is None)::

        >>> ClipBPETokenizer(None, 77)(["a photo of a cat"]).tokens_BL[0, :7].tolist()
        [49406, 320, 1125, 539, 320, 2368, 49407]
    """

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = 77) -> None:
        self.vocab_path = resolve_vocab_path(vocab_path)
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()
        merges = read_merges(self.vocab_path)
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.sot, self.eot = self.encoder[SOT_TOKEN], self.encoder[EOT_TOKEN]
        self.vocab_size = len(vocab)
        self._special = {SOT_TOKEN: self.sot, EOT_TOKEN: self.eot}
        # The special tokens are in the BPE vocabulary only to keep its ids contiguous; they are never registered as
        # added tokens (which would match them anywhere in the text): pieces equal to them never reach the model.
        bpe = models.BPE(vocab=self.encoder, merges=merges, end_of_word_suffix="</w>")
        self._bpe = _HFTokenizer(bpe)
        self._bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)

    def pieces(self, text: str) -> list[str]:
        """Pre-tokens of the cleaned ``text`` (step 2 of the module docstring)."""
        return _PATTERN.findall(clip_clean(text))

    def encode(self, text: str) -> list[int]:
        """Ids of the cleaned text without SOT/EOT."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of each text, with one call into ``tokenizers`` for the whole batch."""
        # Each row is split at its special pieces into runs of ordinary pieces; every run goes to the BPE model as
        # pre-tokenized words (which the ByteLevel step maps to byte characters, one word per piece).
        layout: list[list[int | None]] = []  # per row: special ids, or None for "the next run's ids"
        runs: list[list[str]] = []
        for text in texts:
            row: list[int | None] = []
            run: list[str] = []
            for piece in self.pieces(text):
                special = self._special.get(piece)
                if special is None:
                    run.append(piece)
                    continue
                if run:
                    runs.append(run)
                    row.append(None)
                    run = []
                row.append(special)
            if run:
                runs.append(run)
                row.append(None)
            layout.append(row)
        encoded = iter(self._bpe.encode_batch_fast(runs, is_pretokenized=True, add_special_tokens=False))
        out: list[list[int]] = []
        for row in layout:
            ids: list[int] = []
            for item in row:
                if item is None:
                    ids.extend(next(encoded).ids)
                else:
                    ids.append(item)
            out.append(ids)
        return out

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
        return pack(self.encode_batch(texts), self.sot, self.eot, self.context_length)
