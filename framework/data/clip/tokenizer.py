"""Caption tokenizers. Both return a :class:`TokenBatch`: ``tokens_BL`` (padded with 0) and ``eot_index_B``.

``byte``: the UTF-8 bytes of the cleaned caption (vocabulary 259: pad 0, bytes 1..256, SOT 257, EOT 258). Needs no
vocabulary file, so it works offline and on any text; sequences are longer than with BPE.
``clip_bpe``: CLIP's byte-level BPE read from its merges file (``bpe_simple_vocab_16e6.txt.gz`` or a plain-text
file in the same format; default: the copy in open-clip-torch), vocabulary 49408, the same ids as open_clip's
``tokenize``; see :mod:`framework.data.clip.bpe`.

Cleaning: ``byte`` collapses whitespace, strips and lower-cases (:func:`clean_caption`); ``clip_bpe`` cleans as
open_clip does (:func:`framework.data.clip.bpe.clip_clean`: ftfy and HTML unescaping first).
"""

from __future__ import annotations

from collections.abc import Sequence

from framework.data.clip.text import TokenBatch, Tokenizer, clean_caption, pack

__all__ = ["ByteTokenizer", "TokenBatch", "Tokenizer", "build_tokenizer", "clean_caption", "pack"]


class ByteTokenizer:
    """UTF-8 bytes of the cleaned caption; pad 0, byte b -> b + 1, SOT 257, EOT 258."""

    SOT, EOT = 257, 258
    vocab_size = 259

    def __init__(self, context_length: int = 77) -> None:
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in clean_caption(text).encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i - 1 for i in ids if 1 <= i <= 256).decode("utf-8", errors="replace")

    def __call__(self, texts: Sequence[str]) -> TokenBatch:
        return pack([self.encode(t) for t in texts], self.SOT, self.EOT, self.context_length)


def build_tokenizer(kind: str, context_length: int, vocab_path: str | None = None) -> Tokenizer:
    """``kind``: byte | clip_bpe (``vocab_path`` = CLIP merges file; None = open-clip-torch's copy).

    Raises:
        ValueError: an unknown ``kind``, or clip_bpe without ``vocab_path`` and without open-clip-torch.
    """
    if kind == "byte":
        return ByteTokenizer(context_length)
    if kind == "clip_bpe":
        from framework.data.clip.bpe import ClipBPETokenizer

        return ClipBPETokenizer(vocab_path, context_length)
    raise ValueError(f"unknown tokenizer {kind!r}; known: byte, clip_bpe")
