"""Caption tokenizers: the byte tokenizer's packing, CLIP's byte-level BPE on a tiny merges file, and id-for-id
parity with open_clip's ``tokenize`` on CLIP's real vocabulary (test_clip_tokenizer_parity.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from framework.config.schema import ClipDataConfig
from framework.data.clip import bpe as clip_bpe
from framework.data.clip.bpe import ClipBPETokenizer, bytes_to_unicode, read_merges
from framework.data.clip.tokenizer import ByteTokenizer, build_tokenizer, pack

# ---------------------------------------------------------------------------------------------- byte tokenizer


def test_byte_encode_cleans_and_shifts_bytes() -> None:
    tok = ByteTokenizer(16)
    assert tok.encode("  Hi\t\nTHERE ") == [b + 1 for b in b"hi there"]


def test_byte_truncation_keeps_eot_last() -> None:
    tok = ByteTokenizer(context_length=6)
    batch = tok(["abcdefghij"])
    assert batch.tokens_BL.tolist() == [[257, *(b + 1 for b in b"abcd"), 258]]
    assert batch.eot_index_B.tolist() == [5]


def test_byte_padding_and_eot_index_per_row() -> None:
    tok = ByteTokenizer(context_length=8)
    batch = tok(["ab", "", "abcde"])
    assert batch.tokens_BL.dtype == torch.int64 and batch.eot_index_B.dtype == torch.int64
    assert batch.tokens_BL.shape == (3, 8)
    assert batch.eot_index_B.tolist() == [3, 1, 6]
    for row, eot in zip(batch.tokens_BL, batch.eot_index_B, strict=True):
        assert row[0] == ByteTokenizer.SOT and row[eot] == ByteTokenizer.EOT
        assert row[eot + 1 :].eq(0).all(), "positions after EOT are padding (0)"
        assert row[1:eot].ne(0).all(), "no caption byte maps to the padding id"


def test_byte_unicode_round_trip() -> None:
    tok = ByteTokenizer(32)
    ids = tok.encode("Café ☕ Ünïcode")
    assert ids == [b + 1 for b in "café ☕ ünïcode".encode()]
    assert tok.decode(ids) == "café ☕ ünïcode"


def test_pack_rejects_context_without_room_for_sot_and_eot() -> None:
    with pytest.raises(ValueError, match="context_length must be >= 2"):
        pack([[1, 2]], sot=257, eot=258, context_length=1)


def test_build_tokenizer_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown tokenizer 'wordpiece'"):
        build_tokenizer("wordpiece", 77)
    monkeypatch.setattr(clip_bpe, "default_vocab_path", lambda: None)  # as without open-clip-torch
    with pytest.raises(ValueError, match=r"data\.vocab_path is not set and open-clip-torch"):
        build_tokenizer("clip_bpe", 77)
    with pytest.raises(ValueError, match=r"data\.vocab_path"):
        ClipDataConfig(train_shards="shards", tokenizer="clip_bpe")


# ---------------------------------------------------------------------------------------------- CLIP BPE

# A merges file in CLIP's format: a header line, then one merge per line, in rank order.
TINY_MERGES = "#version: 0.2\nr e\nre d</w>\nc a\nca t</w>\n"


def _byte_id(byte: int, end_of_word: bool = False) -> int:
    """CLIP's vocabulary starts with the 256 byte characters in bytes_to_unicode order (printable ranges
    ``!..~``, ``¡..¬``, ``®..ÿ`` first, then the rest), followed by the same 256 with ``</w>``."""
    return list(bytes_to_unicode()).index(byte) + (256 if end_of_word else 0)


@pytest.fixture
def merges_file(tmp_path: Path) -> Path:
    path = tmp_path / "merges.txt"
    path.write_text(TINY_MERGES, encoding="utf-8")
    return path


def test_bytes_to_unicode_is_a_printable_bijection() -> None:
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(not c.isspace() for c in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == chr(256 + 32)


def test_bpe_vocabulary_layout(merges_file: Path) -> None:
    tok = ClipBPETokenizer(merges_file, context_length=8)
    # 256 bytes + 256 bytes</w> + 4 merges + SOT + EOT
    assert tok.vocab_size == 518
    assert tok.encoder["re"] == 512 and tok.encoder["red</w>"] == 513
    assert tok.encoder["ca"] == 514 and tok.encoder["cat</w>"] == 515
    assert (tok.sot, tok.eot) == (516, 517)
    assert _byte_id(ord("a")) == ord("a") - ord("!")


def test_bpe_exact_ids(merges_file: Path) -> None:
    tok = ClipBPETokenizer(merges_file, context_length=8)
    assert tok.encode("red") == [513]
    assert tok.encode("  RED\tCat ") == [513, 515]  # cleaned: whitespace collapsed, lower-cased
    # "re" ends the word: ('r', 'e</w>') has no merge, so it stays two byte tokens.
    assert tok.encode("re") == [_byte_id(ord("r")), _byte_id(ord("e"), end_of_word=True)]
    # "read": r+e merges first (rank 0); "re"+"a" has no merge.
    assert tok.encode("read") == [512, _byte_id(ord("a")), _byte_id(ord("d"), end_of_word=True)]
    # Punctuation is its own pre-token.
    assert tok.encode("cat!") == [515, _byte_id(ord("!"), end_of_word=True)]


def test_bpe_unknown_words_fall_back_to_bytes(merges_file: Path) -> None:
    tok = ClipBPETokenizer(merges_file, context_length=8)
    assert tok.encode("xyz") == [_byte_id(ord("x")), _byte_id(ord("y")), _byte_id(ord("z"), end_of_word=True)]
    e_acute = "é".encode()  # two UTF-8 bytes, each its own byte character
    assert tok.encode("é") == [_byte_id(e_acute[0]), _byte_id(e_acute[1], end_of_word=True)]
    assert tok.decode(tok.encode("Red xyz, é!")) == "red xyz , é !"


def test_bpe_call_packs_with_sot_eot(merges_file: Path) -> None:
    tok = ClipBPETokenizer(merges_file, context_length=5)
    batch = tok(["red cat", "xyzxyz"])
    assert batch.tokens_BL.tolist()[0] == [tok.sot, 513, 515, tok.eot, 0]
    x, y = _byte_id(ord("x")), _byte_id(ord("y"))
    assert batch.tokens_BL.tolist()[1] == [tok.sot, x, y, _byte_id(ord("z")), tok.eot]  # truncated, EOT kept
    assert batch.eot_index_B.tolist() == [3, 4]


def test_bpe_reads_gzip_and_build_tokenizer(merges_file: Path, tmp_path: Path) -> None:
    gz = tmp_path / "merges.txt.gz"
    gz.write_bytes(gzip.compress(merges_file.read_bytes()))
    plain = ClipBPETokenizer(merges_file, 8)
    zipped = build_tokenizer("clip_bpe", 8, str(gz))
    text = "a red cat reads"
    assert zipped.encode(text) == plain.encode(text)
    assert zipped.vocab_size == plain.vocab_size


def test_read_merges_limit_and_errors(merges_file: Path, tmp_path: Path) -> None:
    assert read_merges(merges_file, max_merges=2) == [("r", "e"), ("re", "d</w>")]
    bad = tmp_path / "bad.txt"
    bad.write_text("#version: 0.2\nr e\nthree parts here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt, line 3"):
        read_merges(bad)
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab"):
        ClipBPETokenizer(tmp_path / "missing.txt.gz")
