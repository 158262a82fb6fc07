"""The scene world's tokenizer: word-level over its closed vocabulary (HF ``tokenizers`` WordLevel, wrapped as a
transformers ``PreTrainedTokenizerFast``), so a tiny LVLM spends its capacity on the scene, not on sub-words.

Words are lower-case runs of letters and single punctuation marks (the ``Whitespace`` pre-tokenizer: ``\\w+|[^\\w\\s]+``
then lower-casing); anything outside the vocabulary is ``<unk>``. Specials: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2,
``<unk>`` 3, ``<image>`` 4 (the image placeholder the LVLM expands into patch tokens), then the chat roles
``user``/``assistant`` markers as plain words. The vocabulary is derived from the scene world's own phrase lists
(:func:`scene_world_words`) in sorted order, so it is the same on every machine and for every seed.
"""

from __future__ import annotations

import re
from functools import lru_cache

from framework.data.clip.offline_images import COLORS
from framework.data.lvlm import scenes as W

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
_WORDS = re.compile(r"\w+|[^\w\s]+")


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower().replace("<image>", " "))


def scene_world_words() -> list[str]:
    """Every word the scene world's captions and conversations can contain, plus the chat roles."""
    texts = [*W.OBJECTS, *(s for syn in W.SYNONYMS.values() for s in syn), *COLORS, *W.SIZES, *W.CELL_PHRASES.values(),
             *W.COUNT_WORDS, *W.DETAIL_PROMPTS, "there is one object in the image : an a , and .",
             "there are objects", "what color is the ? the is", "is there a in the image ? yes , there is a",
             "no , there is no", "how many objects are in the image ? there is are object objects .",
             "user : assistant :"]  # fmt: skip
    return sorted({w for t in texts for w in _words(t)})


@lru_cache(maxsize=1)
def scene_tokenizer():
    """The ``PreTrainedTokenizerFast`` (pad/bos/eos/unk set; ``<image>`` an additional special token)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*SPECIALS, *scene_world_words()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=["<image>"])  # fmt: skip
