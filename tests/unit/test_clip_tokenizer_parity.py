"""``data.tokenizer=clip_bpe`` vs open_clip's own ``tokenize`` on CLIP's real vocabulary: the same [N, 77] ids.

open_clip is loaded from its ``tokenizer.py`` alone: the package ``__init__`` imports torchvision, which does not
load with the CPU torch build here. open-clip-torch is installed (``--no-deps``) by launch/setup.sh; without it
these tests fail (they do not skip).

The caption set is built here: templates x hazards (curly quotes, ligatures, mojibake, nested HTML entities,
emoji, CJK and other scripts, invisible and control characters, literal special-token text, digits and
punctuation, characters where regex engines disagree), whitespace-only and empty strings, and long captions
around and far beyond the 77-token context.
"""

from __future__ import annotations

import html
import importlib.util
from pathlib import Path
from types import ModuleType

import ftfy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.data.clip.bpe import ClipBPETokenizer, clip_clean, default_vocab_path
from framework.data.clip.tokenizer import build_tokenizer

CONTEXT = 77

HAZARDS = [
    # curly quotes
    "the “best” cat", "it’s a dog", "‘single’ quotes", "don’t “stop”",
    # ligatures
    "ﬁsh and ﬂowers", "a ﬀ ﬃ ﬄ ligature", "Ǆ digraph",
    # mojibake
    "cafÃ©", "donâ€™t", "Ã¼ber alles", "â€œquotedâ€\x9d", "naÃ¯ve rÃ©sumÃ©", "ðŸ˜€ smile",
    # (nested) HTML entities
    "&amp;amp;", "&lt;b&gt;bold&lt;/b&gt;", "&amp;lt;i&amp;gt;", "tom &#39;n&#39; jerry", "&quot;hi&quot;",
    "a&nbsp;b", "&#x1F600;", "&amp;amp;amp; triple", "<b>real tag</b> &amp; text", "fish &amp chips",
    "<i>&amp;amp;</i>", "x < y &amp;amp;amp; z",  # with '<' ftfy leaves entities alone: only the two unescapes
    # emoji
    "😀", "thumbs 👍🏽 up", "family 👨‍👩‍👧", "flag 🇫🇷", "❤️ love",
    # CJK and other scripts, case mapping
    "猫の写真", "一只猫", "고양이 사진", "مرحبا بالعالم", "नमस्ते", "ภาษาไทย", "ΣΊΣΥΦΟΣ", "Straße", "İstanbul",
    # width, normalization, invisible and control characters
    "ＡＢＣ１２３", "cafe\u0301", "Ångström", "zero\u200bwidth", "soft\xadhyphen", "\ufeffbom", "x\x00y",
    "\x1b[31mred\x1b[0m", "nb\xa0sp", "ideo\u3000space", "em\u2003space", "line\u2028sep", "cr\r\nlf", "vt\x0bff\x0c",
    # regex-engine corner cases: case-insensitive contractions, a combining mark that folds to a letter
    "IT'S", "itʼs", "it'ſ", "a\u0345b", "5 \u212a", "ǅemal",
    # literal special-token text: a piece of its own becomes the special id, inside a symbol run it does not
    "<start_of_text>", "<end_of_text>", "<|startoftext|>", "<|endoftext|>", "!<end_of_text>", "x<<start_of_text>",
    "a<end_of_text>b", "THE <END_OF_TEXT> END", "<end_of_text><start_of_text>", "'<end_of_text>", "1<end_of_text>",
    # digits and punctuation
    "3.14159", "1,000,000 dollars", "the 2nd of may", "x_y+z=3", "...!!!???", "rock'n'roll", "we'll they've i'm",
    "½ cup ² ³ Ⅻ", "#hashtag @user", "(a) [b] {c}", "50% off!", "e-mail: a.b@c.de", "---", "''",
]  # fmt: skip
TEMPLATES = ["{}", "a photo of {}", "A Photo Of {}!", "{} next to a dog", "close-up: {}", "\t {} \n"]
BLANK = ["", " ", "\t\n", "\xa0", "\u3000 \u2003", "&nbsp;", "\u200b"]


def long_captions() -> list[str]:
    words = "a very long caption about a small brown dog running on the beach".split()
    out = [" ".join(words * k) for k in (6, 7, 10, 20)]
    out += ["cat " * n for n in range(72, 80)]  # SOT + n + EOT around the 77-token context
    out += ["ﬁsh “quoted” cafÃ© &amp;amp; 😀 " * 20, "<end_of_text> " * 80, "😀" * 100, "猫" * 200]
    return out


def captions() -> list[str]:
    return [t.format(h) for t in TEMPLATES for h in HAZARDS] + BLANK + long_captions()


@pytest.fixture(scope="module")
def open_clip_tokenizer() -> ModuleType:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("open-clip-torch is not installed (`bash launch/setup.sh` installs it with --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)  # needs ftfy, regex, numpy, torch; no relative imports
    return module


@pytest.fixture(scope="module")
def ours() -> ClipBPETokenizer:
    tok = build_tokenizer("clip_bpe", CONTEXT)  # no vocab_path: open_clip's packaged file
    assert isinstance(tok, ClipBPETokenizer)
    return tok


def test_default_vocab_is_open_clips_file(ours: ClipBPETokenizer, open_clip_tokenizer: ModuleType) -> None:
    assert ours.vocab_path == default_vocab_path() == Path(open_clip_tokenizer.default_bpe())
    reference = open_clip_tokenizer.SimpleTokenizer()
    assert ours.vocab_size == reference.vocab_size == 49408
    assert (ours.sot, ours.eot) == (reference.sot_token_id, reference.eot_token_id) == (49406, 49407)
    assert ours.encoder == reference.encoder


def test_ids_match_open_clip(ours: ClipBPETokenizer, open_clip_tokenizer: ModuleType) -> None:
    texts = captions()
    assert len(texts) >= 300
    batch = ours(texts)
    reference_BL = open_clip_tokenizer.tokenize(texts, CONTEXT)
    assert batch.tokens_BL.shape == reference_BL.shape == (len(texts), CONTEXT)
    bad = [t for t, a, b in zip(texts, batch.tokens_BL, reference_BL, strict=True) if not torch.equal(a, b)]
    assert not bad, f"{len(bad)} of {len(texts)} captions tokenize differently from open_clip, e.g. {bad[:5]}"
    # The packed EOT is the last EOT of a row. (open_clip's text tower reads at argmax, the *first* EOT: for a caption
    # with a literal <end_of_text> piece that is the literal one; our tower reads at eot_index_B, the packed one.)
    positions_BL = torch.arange(CONTEXT).expand_as(reference_BL)
    last_eot_B = torch.where(reference_BL == 49407, positions_BL, -1).amax(1)
    assert batch.eot_index_B.tolist() == last_eot_B.tolist()
    truncated = batch.eot_index_B == CONTEXT - 1
    assert truncated.sum() > 10 and batch.tokens_BL[truncated, -1].eq(49407).all()


def test_literal_special_tokens_as_open_clip(ours: ClipBPETokenizer) -> None:
    assert ours.encode("<end_of_text>") == [ours.eot]
    assert ours.encode("A<START_OF_TEXT>b")[1] == ours.sot  # cleaned to lower case first
    assert ours.eot not in ours.encode("!<end_of_text>")  # '!<' is one symbol run
    assert not {ours.sot, ours.eot} & set(ours.encode("<|startoftext|> <|endoftext|>"))  # OpenAI's spelling: text


def test_clip_clean_examples() -> None:
    assert clip_clean("  Ã‰cole “ﬁne” &amp;amp;  ART ") == 'école "fine" & art'
    assert clip_clean("&amp;lt;b&amp;gt; it’s\u3000ＯＫ") == "<b> it's ok"
    assert clip_clean("\x1b[1mbold\x1b[0m x\x00y") == "bold xy"
    assert clip_clean(" \t\n ") == ""


# The characters the cleaning's fast path accepts (see _FTFY_INVARIANT), the ones next to its edges, and entities.
_ENTITIES = ["&amp;", "&lt;", "&gt;", "&#39;", "&quot;", "&nbsp;", "\r\n", "\x1b[31m", "<b>"]
_ASCII_PIECES = [chr(c) for c in range(0x20, 0x7F)] + list("\t\n\r\x0b\x0c\x1b\x00\x7f") + _ENTITIES


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_ASCII_PIECES), max_size=30).map("".join))
def test_ascii_fast_path_equals_ftfy(text: str) -> None:
    full = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).lower()
    assert clip_clean(text) == full
