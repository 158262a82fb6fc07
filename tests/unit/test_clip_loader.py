"""CLIP WebDataset loader on tiny img2dataset-layout shards built in tmp: shard lists, rank/worker split,
bad samples and their budget, exact resume, determinism, resampling, evaluation pass."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framework.config.schema import ClipDataConfig
from framework.data.clip import loader as clip_loader
from framework.data.clip.image_ops import decode_image, preprocess
from framework.data.clip.loader import (
    BadSampleBudgetExceeded,
    ClipBatch,
    ClipLoader,
    build_clip_loader,
    count_samples,
    expand_shards,
    read_pairs,
)
from framework.data.clip.shards import write_shards

IMAGE_SIZE = 32
BATCH = 4


def _write_dataset(root: Path, n_samples: int, per_shard: int) -> Path:
    """``n_samples`` 40x30 JPEGs (distinct colours and a gradient) with captions, as shards in root/shards."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = ["image,caption"]
    for i in range(n_samples):
        arr = np.zeros((30, 40, 3), dtype=np.uint8)
        arr[..., 0] = (37 * i) % 256
        arr[..., 1] = np.arange(40, dtype=np.uint8)[None, :] * 6
        arr[..., 2] = np.arange(30, dtype=np.uint8)[:, None] * 8
        Image.fromarray(arr).save(images / f"{i}.jpg", quality=90)
        rows.append(f"{i}.jpg,a photo number {i}")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    write_shards(images, root / "captions.csv", root / "shards", samples_per_shard=per_shard, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 shards: 7 of 10 samples and a last one of 5 (unequal shards, as in real data)."""
    return _write_dataset(tmp_path_factory.mktemp("clip"), n_samples=75, per_shard=10)


@pytest.fixture(scope="module")
def all_keys(shard_dir: Path) -> set[str]:
    keys = set()
    for shard in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            keys |= {m.name.split(".")[0] for m in tar.getmembers()}
    return keys


def _members(shard: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(shard) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 shards of 10 samples; shard 00001 rewritten by hand with 5 bad samples:
    a truncated JPEG, bytes that are no image, a missing caption, an empty caption and a missing image."""
    shards = _write_dataset(tmp_path_factory.mktemp("bad"), n_samples=40, per_shard=10)
    members = []
    for name, data in _members(shards / "00001.tar"):
        key, ext = name.split(".")
        if key == "000010001" and ext == "jpg":
            data = data[: len(data) // 2]
        elif key == "000010002" and ext == "jpg":
            data = b"this is not a jpeg"
        elif (key == "000010003" and ext == "txt") or (key == "000010005" and ext == "jpg"):
            continue
        elif key == "000010004" and ext == "txt":
            data = b"  \n"
        members.append((name, data))
    _write_tar(shards / "00001.tar", members)
    return shards


BAD_KEYS = {
    "000010001": "bad_image",
    "000010002": "bad_image",
    "000010003": "missing_caption",
    "000010004": "empty_caption",
    "000010005": "missing_image",
}


def _cfg(shards: Path, **kw: object) -> ClipDataConfig:
    defaults: dict[str, object] = {"workers": 0, "shuffle_buffer": 0}
    return ClipDataConfig(train_shards=str(shards), **(defaults | kw))


def _loader(cfg: ClipDataConfig, *, rank: int = 0, world_size: int = 1, seed: int = 0, train: bool = True,
            state: dict | None = None, single_pass: bool = False) -> ClipLoader:  # fmt: skip
    return build_clip_loader(
        cfg, shards=cfg.train_shards, image_size=IMAGE_SIZE, context_length=16, batch_size=BATCH, rank=rank,
        world_size=world_size, seed=seed, train=train, state=state, single_pass=single_pass,
    )  # fmt: skip


def _take(loader: ClipLoader, n: int) -> list[ClipBatch]:
    return [next(loader) for _ in range(n)]


def _keys(batches: list[ClipBatch]) -> list[str]:
    return [k for b in batches for k in b.keys]


# ---------------------------------------------------------------------------------------------- shard lists


def test_expand_shards_forms(shard_dir: Path, tmp_path: Path) -> None:
    expected = [str(shard_dir / f"{i:05d}.tar") for i in range(8)]
    assert expand_shards(str(shard_dir)) == expected
    assert expand_shards(str(shard_dir / "{00000..00007}.tar")) == expected
    assert expand_shards(str(shard_dir / "*.tar")) == expected
    assert expand_shards(str(shard_dir / "00003.tar")) == [expected[3]]
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    rel = Path(os.path.relpath(shard_dir, listing.parent))  # relative entries are relative to the list file
    listing.write_text(f"# train split\n\n{rel / '00002.tar'}\n  {shard_dir / '00005.tar'}  \n")
    got = expand_shards(str(listing))
    assert [Path(p).resolve() for p in got] == [Path(expected[2]).resolve(), Path(expected[5]).resolve()]


def test_expand_shards_errors(shard_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such directory, file"):
        expand_shards(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no \*\.tar"):
        expand_shards(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_shards(str(tmp_path / "{00000..00003}.tar"))
    with pytest.raises(FileNotFoundError, match="2 of 10 shards missing"):
        expand_shards(str(shard_dir / "{00000..00009}.tar"))
    with pytest.raises(FileNotFoundError, match="glob .* matches no file"):
        expand_shards(str(tmp_path / "*.tar"))
    listing = tmp_path / "train.txt"
    listing.write_text(f"# comment\n{shard_dir / '00000.tar'}\nmissing-00042.tar\n")
    with pytest.raises(FileNotFoundError, match=r"train.txt, line 3: shard not found: .*missing-00042.tar"):
        expand_shards(str(listing))
    listing.write_text("# nothing here\n\n")
    with pytest.raises(ValueError, match="names no shards"):
        expand_shards(str(listing))


def test_count_samples(shard_dir: Path, bad_dir: Path) -> None:
    assert count_samples(expand_shards(str(shard_dir))) == 75
    # The sample without an image member is not a sample; the others (even undecodable) are counted.
    assert count_samples(expand_shards(str(bad_dir))) == 39


# ---------------------------------------------------------------------------------------------- split


def test_shard_split_disjoint_and_complete_per_pass(shard_dir: Path) -> None:
    cfg = _cfg(shard_dir, workers=2)
    streams = [_loader(cfg, rank=r, world_size=2)._stream for r in range(2)]
    shards = expand_shards(str(shard_dir))
    orders = []
    for p in range(3):
        dealt = [s for st in streams for w in range(2) for s in st.shards_for_pass(p, w)]
        assert sorted(dealt) == shards, f"pass {p}: every shard to exactly one (rank, worker)"
        orders.append(dealt)
    assert orders[0] != orders[1], "passes are shuffled differently"


def test_ranks_and_workers_disjoint_complete_and_equal_length(shard_dir: Path, all_keys: set[str]) -> None:
    cfg = _cfg(shard_dir, workers=2, shuffle_buffer=8)
    per_rank: list[list[ClipBatch]] = []
    for rank in range(2):
        loader = _loader(cfg, rank=rank, world_size=2)
        assert loader.batches_per_epoch == 75 // (BATCH * 2)
        with loader:
            per_rank.append(_take(loader, 3 * loader.batches_per_epoch))  # no rank runs dry
        assert all(len(b) == BATCH for b in per_rank[-1])
        assert loader.epoch == 3
    for p in range(2):  # passes 0 and 1 are fully read within 3 epochs
        seen = [k for batches in per_rank for b in batches for k, bp in zip(b.keys, b.passes, strict=True) if bp == p]
        assert len(seen) == len(set(seen)), f"pass {p}: a sample was read twice"
        assert set(seen) == all_keys, f"pass {p}: samples missing {sorted(all_keys - set(seen))[:5]}"
    rank_keys = [
        {k for b in batches for k, bp in zip(b.keys, b.passes, strict=True) if bp == 0} for batches in per_rank
    ]
    assert not rank_keys[0] & rank_keys[1]


def test_batch_contents(shard_dir: Path) -> None:
    batch = next(_loader(_cfg(shard_dir)))
    assert batch.images_BCHW.dtype == torch.float32 and batch.images_BCHW.shape == (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch.tokens_BL.dtype == torch.int64 and batch.tokens_BL.shape == (BATCH, 16)
    assert batch.eot_index_B.dtype == torch.int64
    # Byte tokenizer: "a photo number {i}" (key = shard * 10000 + index, i = shard * 10 + index).
    for key, tokens, eot in zip(batch.keys, batch.tokens_BL, batch.eot_index_B, strict=True):
        i = int(key[:5]) * 10 + int(key[5:])
        caption = f"a photo number {i}"[:14]
        assert tokens[1 : eot.item()].tolist() == [b + 1 for b in caption.encode()]


def test_eval_single_pass_reads_every_sample_once_center_cropped(shard_dir: Path, all_keys: set[str]) -> None:
    loader = _loader(_cfg(shard_dir, workers=2), train=False, single_pass=True)
    batches = list(loader)
    keys = _keys(batches)
    assert sorted(keys) == sorted(all_keys)
    assert sum(len(b) < BATCH for b in batches) <= 2, "only each worker's last batch may be short"
    members = dict(_members(shard_dir / "00003.tar"))
    b = next(b for b in batches if "000030004" in b.keys)
    i = b.keys.index("000030004")
    expected = preprocess(decode_image(members["000030004.jpg"], IMAGE_SIZE), IMAGE_SIZE, train=False)
    torch.testing.assert_close(b.images_BCHW[i], expected)
    with pytest.raises(ValueError, match="single_pass"):
        loader.state_dict()


def test_read_pairs_for_evaluation(bad_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    images, captions = read_pairs(str(bad_dir), image_size=IMAGE_SIZE, limit=3)
    assert captions == ["a photo number 0", "a photo number 1", "a photo number 2"]  # shard order
    members = dict(_members(bad_dir / "00000.tar"))
    expected = preprocess(decode_image(members["000000002.jpg"], IMAGE_SIZE), IMAGE_SIZE, train=False)
    torch.testing.assert_close(images[2], expected)
    with caplog.at_level(logging.WARNING, logger="framework.data.clip.loader"):
        images, captions = read_pairs(str(bad_dir), image_size=IMAGE_SIZE)
    assert images.shape == (35, 3, IMAGE_SIZE, IMAGE_SIZE) and len(captions) == 35
    assert "a photo number 13" not in captions  # 000010003: no caption member
    assert sum("bad pair skipped" in r.getMessage() for r in caplog.records) == len(BAD_KEYS)


# ---------------------------------------------------------------------------------------------- bad samples


def test_bad_samples_dropped_counted_and_logged(bad_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    loader = _loader(_cfg(bad_dir, max_bad_samples=None), train=False, single_pass=True)
    with caplog.at_level(logging.WARNING, logger="framework.data.clip.loader"):
        keys = _keys(list(loader))
    assert len(keys) == 35 and not set(keys) & set(BAD_KEYS)
    assert loader.stats() == {"seen": 40, "bad": 5, "bad_by_reason": dict(Counter(BAD_KEYS.values()))}
    for key, reason in BAD_KEYS.items():
        assert any(
            "00001.tar" in r.getMessage() and key in r.getMessage() and reason in r.getMessage() for r in caplog.records
        ), f"no warning naming shard, {key} and {reason}"


def test_bad_sample_logging_is_rate_limited(bad_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    loader = _loader(_cfg(bad_dir, max_bad_samples=None, max_bad_fraction=1.0))
    with caplog.at_level(logging.WARNING, logger="framework.data.clip.loader"):
        _take(loader, 4 * 35 // BATCH)  # about 4 passes: 20 bad samples
    assert loader.stats()["bad"] >= 15
    assert len(caplog.records) == clip_loader.LOG_FIRST_BAD
    assert "logged at most every 30 s" in caplog.records[-1].getMessage()


def test_budget_max_bad_samples(bad_dir: Path) -> None:
    loader = _loader(_cfg(bad_dir, max_bad_samples=3), train=False)
    with pytest.raises(BadSampleBudgetExceeded, match=r"4 bad samples .*data\.max_bad_samples=3") as err:
        _take(loader, 20)
    assert "shard " in str(err.value) and "00001.tar" in str(err.value) and "key 00001000" in str(err.value)


def test_budget_max_bad_fraction(bad_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clip_loader, "FRACTION_MIN_SEEN", 20)  # 1000 in production; the rule is the same
    loader = _loader(_cfg(bad_dir, max_bad_samples=None, max_bad_fraction=0.05), train=False)
    with pytest.raises(BadSampleBudgetExceeded, match=r"data\.max_bad_fraction=0\.05"):
        _take(loader, 20)


def test_unlimited_budget_keeps_going(bad_dir: Path) -> None:
    loader = _loader(_cfg(bad_dir, max_bad_samples=None, max_bad_fraction=1.0), train=False)
    batches = _take(loader, 3 * 35 // BATCH)
    assert all(len(b) == BATCH for b in batches)
    assert loader.stats()["bad"] >= 10


def test_unreadable_shard_is_a_counted_error(shard_dir: Path, tmp_path: Path) -> None:
    with tarfile.open(shard_dir / "00000.tar") as tar:
        cut = tar.getmember("000000005.jpg").offset_data + 100
    # Truncated inside a member's data (a cut at a header boundary reads as a complete, shorter tar).
    (tmp_path / "00000.tar").write_bytes((shard_dir / "00000.tar").read_bytes()[:cut])
    (tmp_path / "00001.tar").write_bytes((shard_dir / "00001.tar").read_bytes())
    loader = _loader(_cfg(tmp_path, max_bad_samples=None), train=False, single_pass=True)
    keys = _keys(list(loader))
    stats = loader.stats()
    assert stats["bad_by_reason"].get("shard_error", 0) >= 1
    assert {f"00001{i:04d}" for i in range(10)} <= set(keys), "the next shard is read normally"
    assert any(k.startswith("00000") for k in keys), "samples before the damage are kept"


# ---------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("workers", "shuffle_buffer", "rank", "cut"),
    [(0, 0, 0, 5), (0, 16, 1, 7), (2, 16, 1, 6), (2, 0, 1, 4)],
)
def test_resume_continues_the_exact_stream(
    bad_dir: Path, workers: int, shuffle_buffer: int, rank: int, cut: int
) -> None:
    """Cut points chosen mid-pass; with 2 workers, right after a worker sent a provisional bad-sample report
    (the shard with 5 bad samples in a row, batch 4) that the resumed worker must not send again."""
    cfg = _cfg(bad_dir, workers=workers, shuffle_buffer=shuffle_buffer, max_bad_samples=None, max_bad_fraction=1.0)
    total = 20  # > one pass (35 good samples / 2 ranks)
    with _loader(cfg, rank=rank, world_size=2) as full:
        reference = _take(full, total)
        reference_stats = full.stats()
    with _loader(cfg, rank=rank, world_size=2) as first:
        before = _take(first, cut)
        state = json.loads(json.dumps(first.state_dict()))  # JSON-serialisable, as in a checkpoint
    if workers == 2:
        assert any(reports for _, _, reports in state["positions"]), "cut meant to follow a provisional report"
    with _loader(cfg, rank=rank, world_size=2, state=state) as second:
        assert second.batches_yielded == cut
        after = _take(second, total - cut)
        assert second.stats() == reference_stats, "bad-sample counts resume too"
    assert _keys(before + after) == _keys(reference)
    for got, want in zip(before + after, reference, strict=True):
        assert torch.equal(got.images_BCHW, want.images_BCHW), "same crops after resume"
        assert torch.equal(got.tokens_BL, want.tokens_BL)


def test_close_then_continue_is_seamless(shard_dir: Path) -> None:
    cfg = _cfg(shard_dir, workers=2, shuffle_buffer=8)
    with _loader(cfg) as reference:
        want = _keys(_take(reference, 9))
    loader = _loader(cfg)
    got = _keys(_take(loader, 5))
    loader.close()  # stops the workers; the next batch restarts them at the position
    got += _keys(_take(loader, 4))
    loader.close()
    assert got == want


def test_resume_with_other_worker_count_starts_next_epoch(shard_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with _loader(_cfg(shard_dir, workers=0)) as first:
        _take(first, first.batches_per_epoch + 3)
        state = first.state_dict()
    assert state["epoch"] == 1
    with caplog.at_level(logging.WARNING, logger="framework.data.clip.loader"):
        second = _loader(_cfg(shard_dir, workers=2), state=state)
    assert any("different workers" in r.getMessage() for r in caplog.records)
    assert second.epoch == 2 and second.batches_yielded == 2 * second.batches_per_epoch
    with second:
        assert set(next(second).passes) == {2}
    with pytest.raises(ValueError, match="saved by rank 0, loaded on rank 1"):
        _loader(_cfg(shard_dir), rank=1, world_size=2, state={**state, "layout": {**state["layout"], "world_size": 2}})


# ---------------------------------------------------------------------------------------------- determinism, modes


def test_same_seed_same_order_other_seed_other_order(shard_dir: Path) -> None:
    cfg = _cfg(shard_dir, workers=0, shuffle_buffer=16)
    a = _keys(_take(_loader(cfg, seed=3), 8))
    b = _keys(_take(_loader(cfg, seed=3), 8))
    c = _keys(_take(_loader(cfg, seed=4), 8))
    assert a == b
    assert a != c


def test_resampled_yields_full_batches_with_few_shards(shard_dir: Path, all_keys: set[str]) -> None:
    shards = f"{shard_dir}/{{00000..00002}}.tar"  # 3 shards for 2 ranks x 2 workers: only resampling can do it
    with pytest.raises(ValueError, match="data.resampled=true"):
        _loader(_cfg(shards, workers=2), world_size=2)
    cfg = _cfg(shards, workers=2, resampled=True, shuffle_buffer=8, samples_per_epoch=64)
    with _loader(cfg, rank=1, world_size=2) as loader:
        assert loader.batches_per_epoch == 8
        batches = _take(loader, 12)
    assert all(len(b) == BATCH for b in batches)
    assert set(_keys(batches)) <= {k for k in all_keys if k < "00003"}
