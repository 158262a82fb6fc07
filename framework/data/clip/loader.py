"""Image-caption WebDataset streaming for CLIP / RankCLIP (img2dataset layout: ``{key}.jpg``, ``.txt``, ``.json``).

Pipeline, per rank (the open_clip order, built from webdataset's tar iterators)::

    shards ─► pass p: shuffled with seed (seed, p), or drawn with replacement when ``data.resampled``
           ─► split by node: shards[rank::world_size] ─► split by worker: [...][worker::workers]
           ─► tar reading (webdataset tar_file_expander + group_by_keys; read errors become bad-sample records)
           ─► shuffle buffer (seeded by seed, rank, worker, pass) ─► [resume: skip raw samples, no decode]
           ─► decode (PIL) + crop (train: seeded random resized crop; eval: center crop) ─► tokenize ─► batch
           ─► torch DataLoader (``data.workers`` processes, batches built in the workers) ─► :class:`ClipLoader`

**Passes and epochs.** Every (rank, worker) reads an infinite sequence of *passes*; in pass ``p`` the shards
are permuted with seed ``(seed, p)`` (the same permutation on every rank) and dealt out round-robin, first by
rank, then by worker, so in one pass every shard goes to exactly one (rank, worker) (this needs at least
``world_size * workers`` shards). A worker that finishes its shards continues with its shards of pass ``p + 1``:
no rank or worker ever runs dry, and every rank yields the same number of batches. With ``data.resampled`` each
(rank, worker) instead draws, per pass, as many shards as it would otherwise get, with replacement. The shuffle
buffer is filled afresh each pass (so a position is a pass and an offset). An *epoch* is bookkeeping only:
``batches_per_epoch = samples_per_epoch // (batch_size * world_size)`` batches (open_clip's ``with_epoch``);
iteration never stops (``next(loader)`` forever). Passes and epochs drift apart slightly because shard sizes
differ. ``single_pass=True`` (evaluation) instead reads pass 0 once and stops; each worker's last batch may be
short.

**Bad samples.** A sample with an undecodable/truncated image, no image, no caption, an empty or non-UTF-8
caption, and every tar/shard read error, is dropped, counted by reason and logged (shard URL, key, reason;
the first 10 per worker, then at most one line per 30 s per worker). Counts travel with each batch to the
training process; a worker that meets ``batch_size`` bad samples before completing a batch also sends a
provisional counts-only report, so a fully broken shard cannot stall the budget check. Past
``data.max_bad_samples`` bad samples on a rank, or a bad fraction above ``data.max_bad_fraction`` once 1000
samples were seen, iteration raises :class:`BadSampleBudgetExceeded`.

**Resume.** :meth:`ClipLoader.state_dict` records, as of the last batch handed out, every logical worker's
position (pass, raw samples consumed after the shuffle buffer), the worker expected next and the bad-sample
counts. It is per rank: a checkpoint must keep every rank's state. Built again with its rank's state at the
same world size and worker count, the loader continues with the identical sample order, crops included:
DataLoader always starts at its worker 0, so logical worker ids are rotated to begin with the expected one,
each worker replays its current pass up to its position, and crops are seeded per sample. *Cost*: the replay
re-reads the tar bytes and refills the shuffle buffer from the start of each worker's current pass (at most one
pass over that worker's shards, ``1 / (world_size * workers)`` of the dataset, read by all workers in
parallel), but decodes no image. With a different world size, worker count, shard list, seed, shuffle buffer,
resampling or train flag the saved position means nothing: a warning is logged and the loader starts at the
beginning of the next epoch (pass = that epoch number on every rank, bad-sample counts reset).

Shapes: B batch, C channels (3), H/W image side, L context length.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import random
import tarfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from framework.config.schema import ClipDataConfig
from framework.data.clip.image_ops import decode_image, normalize_BHWC, preprocess_uint8
from framework.data.clip.tokenizer import Tokenizer, build_tokenizer

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
"""Member suffixes read as the sample's image (first present wins)."""
CAPTION_EXT = "txt"
STATE_VERSION = 1
FRACTION_MIN_SEEN = 1000
"""``data.max_bad_fraction`` is checked once a rank has seen this many samples."""
LOG_FIRST_BAD = 10
LOG_EVERY_S = 30.0
_MAX_EMPTY_PASSES = 100
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_READ_ERRORS = (tarfile.TarError, OSError, ValueError, EOFError, zlib.error)
"""Errors of tar reading that mean damaged or missing data (recorded as bad samples); any other is raised."""

# Bad-sample reasons (keys of ``stats()["bad_by_reason"]``).
MISSING_IMAGE = "missing_image"
MISSING_CAPTION = "missing_caption"
EMPTY_CAPTION = "empty_caption"
BAD_CAPTION = "bad_caption"
BAD_IMAGE = "bad_image"
SHARD_ERROR = "shard_error"


class BadSampleBudgetExceeded(RuntimeError):
    """A rank dropped more bad samples than ``data.max_bad_samples`` / ``data.max_bad_fraction`` allow."""


# ---------------------------------------------------------------------------------------------- shard lists


def _is_url(spec: str) -> bool:
    return "://" in spec or spec.startswith("pipe:")


def expand_shards(spec: str) -> list[str]:
    """The shard paths of ``spec``, in order.

    Forms: a directory (every ``*.tar`` in it, sorted), a brace pattern (``dir/{00000..00009}.tar``), a glob
    (``dir/*.tar``), one ``.tar`` file, or a list file (one path per line, ``#`` comment lines and blank lines
    ignored, relative paths relative to the list file). Remote URLs (``s3://``, ``pipe:``...) are expanded but
    not checked. Every local shard must exist: the error names the missing ones (and the list file line).
    """
    spec = str(spec).strip()
    if not spec:
        raise ValueError("empty shard spec: give a directory, a brace pattern, a glob or a list file")
    if _is_url(spec):
        return list(braceexpand.braceexpand(spec))
    path = Path(spec)
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar"))
        if not shards:
            raise FileNotFoundError(f"shard directory {path} has no *.tar files")
        return shards
    if "{" in spec and "}" in spec:
        shards = list(braceexpand.braceexpand(spec))
        missing = [s for s in shards if not os.path.isfile(s)]
        if len(missing) == len(shards):
            raise FileNotFoundError(f"shard pattern {spec!r} matches no file (first: {shards[0]})")
        if missing:
            raise FileNotFoundError(
                f"shard pattern {spec!r}: {len(missing)} of {len(shards)} shards missing, e.g. {missing[:3]}"
            )
        return shards
    if glob.has_magic(spec):
        shards = sorted(glob.glob(spec))
        if not shards:
            raise FileNotFoundError(f"shard glob {spec!r} matches no file")
        return shards
    if path.is_file():
        return [str(path)] if path.name.endswith(".tar") else _read_shard_list(path)
    raise FileNotFoundError(f"shard spec {spec!r}: no such directory, file, brace pattern or glob")


def _read_shard_list(list_file: Path) -> list[str]:
    shards = []
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if _is_url(entry):
            shards.append(entry)
            continue
        shard = Path(entry) if Path(entry).is_absolute() else list_file.parent / entry
        if not shard.is_file():
            raise FileNotFoundError(f"{list_file}, line {lineno}: shard not found: {shard}")
        shards.append(str(shard))
    if not shards:
        raise ValueError(f"shard list {list_file} names no shards")
    return shards


def count_samples(shards: Sequence[str]) -> int:
    """Samples (keys with an image member) in ``shards``, from the tar headers alone: data is seeked over,
    nothing is decoded. A damaged shard counts up to the damage (logged; the loader skips it the same way).
    Large datasets should set ``data.samples_per_epoch`` instead (every rank counts)."""
    total = 0
    for shard in shards:
        if _is_url(shard):
            raise ValueError(f"cannot count samples of remote shard {shard}: set data.samples_per_epoch")
        keys: set[str] = set()
        try:
            with tarfile.open(shard, "r:*") as tar:
                for member in tar:
                    if member.isreg():
                        prefix, suffix = base_plus_ext(member.name)
                        if prefix is not None and suffix.lower() in IMAGE_EXTS:
                            keys.add(prefix)
        except (tarfile.TarError, OSError) as e:
            logger.warning("shard %s: tar index unreadable after %d samples (%s); counting those", shard, len(keys), e)
        total += len(keys)
    return total


def _fingerprint(shards: Sequence[str]) -> str:
    """Names (not directories: data may be mounted elsewhere on resume) of the shards, hashed."""
    return hashlib.sha1("\n".join(os.path.basename(s) for s in shards).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- worker side


@dataclass(slots=True)
class _Item:
    """What a worker sends to the training process.

    ``commit=True``: a batch (or, at the end of a single pass, the last counts): the worker's position moves to
    ``position`` and ``seen``/``bad`` (samples since its previous committed item) join the rank's counts.
    ``commit=False``: a provisional report of the bad samples met since the last committed item, sent every
    ``batch_size`` of them while no batch completes; it only feeds the budget check, so a shard full of bad
    samples fails the run promptly instead of stalling it, and the counts stay exact at every committed position.
    """

    worker: int
    commit: bool
    position: tuple[int, int]
    """(pass, raw samples consumed in that pass) after this item (meaningful when ``commit``)."""
    seen: int
    bad: dict[str, int]
    last_bad: dict[str, str] | None
    images_BCHW: torch.Tensor | None
    tokens_BL: torch.Tensor | None
    eot_index_B: torch.Tensor | None
    keys: list[str]
    shards: list[str]
    passes: list[int]


def _read_shards(urls: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Samples of ``urls`` in order (webdataset's tar iterators); every read error becomes a marker sample
    ``{"__error__": reason, "__url__", "__key__", "detail"}`` at the point of the stream where it happened, so
    errors are counted once, in stream order, and skipped with the samples around them on resume."""
    errors: list[dict[str, Any]] = []
    where = {"url": "", "key": "<start of shard>"}

    def handler(exn: Exception) -> bool:
        if not isinstance(exn, _READ_ERRORS):
            raise exn  # a bug, not damaged data
        detail = f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}"
        errors.append({"__error__": SHARD_ERROR, "__url__": where["url"], "__key__": where["key"], "detail": detail})
        return True  # recorded: continue with the next member / shard

    def opened() -> Iterator[dict[str, Any]]:
        for url in urls:
            where["url"], where["key"] = url, "<start of shard>"
            try:
                stream = gopen(url)
            except (OSError, ValueError) as exn:  # missing file, failing pipe or network: a recorded shard error
                handler(exn)
                continue
            try:
                yield {"url": url, "stream": stream}
            finally:
                stream.close()

    for sample in group_by_keys(tar_file_expander(opened(), handler=handler), handler=handler):
        while errors:
            yield errors.pop(0)
        where["key"] = f"after {sample['__key__']}"
        yield sample
    while errors:
        yield errors.pop(0)


class _BadSample(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _decode_sample(sample: dict[str, Any], image_size: int) -> tuple[Image.Image, str]:
    """(decoded RGB image, caption) of a grouped tar sample; raises :class:`_BadSample` naming the reason."""
    if "__error__" in sample:
        raise _BadSample(sample["__error__"], sample["detail"])
    data = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
    if data is None:
        raise _BadSample(MISSING_IMAGE, f"no {'/'.join(IMAGE_EXTS)} member")
    raw_caption = sample.get(CAPTION_EXT)
    if raw_caption is None:
        raise _BadSample(MISSING_CAPTION, f"no .{CAPTION_EXT} member")
    try:
        caption = raw_caption.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _BadSample(BAD_CAPTION, f"caption is not UTF-8: {e}") from None
    if not caption.strip():
        raise _BadSample(EMPTY_CAPTION, "caption is empty")
    try:
        img = decode_image(data, image_size)
    except _IMAGE_ERRORS as e:
        raise _BadSample(BAD_IMAGE, f"{type(e).__name__}: {e}") from None
    return img, caption


class _BatchBuilder:
    """Decodes samples of one worker into batches and keeps the bad-sample counts since the last message."""

    def __init__(self, stream: _ClipStream, worker: int) -> None:
        self.s, self.worker = stream, worker
        self.bad_total = 0
        self.suppress_reports = 0
        self._last_log = 0.0
        self._reset()

    def _reset(self) -> None:
        self.images: list[np.ndarray] = []
        self.captions: list[str] = []
        self.keys: list[str] = []
        self.shards: list[str] = []
        self.passes: list[int] = []
        self.seen = 0
        self.last_added_bad = False
        self.bad: Counter[str] = Counter()
        self.last_bad: dict[str, str] | None = None

    def _drop(self, url: str, key: str, reason: str, detail: str) -> None:
        self.last_added_bad = True
        self.bad[reason] += 1
        self.bad_total += 1
        self.last_bad = {"shard": url, "key": key, "reason": reason, "detail": detail[:300]}
        now = time.monotonic()
        if self.bad_total <= LOG_FIRST_BAD or now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            logger.warning(
                "bad sample dropped (rank %d, worker %d, %d so far on this worker): shard %s, key %s: %s (%s)%s",
                self.s.rank, self.worker, self.bad_total, url, key, reason, detail[:300],
                "; further bad samples on this worker are logged at most every 30 s"
                if self.bad_total == LOG_FIRST_BAD else "",
            )  # fmt: skip

    def add(self, sample: dict[str, Any], pass_index: int) -> None:
        self.seen += 1
        self.last_added_bad = False
        url, key = sample["__url__"], sample["__key__"]
        try:
            img, caption = _decode_sample(sample, self.s.image_size)
        except _BadSample as bad:
            return self._drop(url, key, bad.reason, bad.detail)
        # Crops are seeded per sample (not by a running rng) so a resumed run, which skips samples without
        # decoding them, crops every later sample exactly as the uninterrupted run does.
        rng = random.Random(f"crop/{self.s.seed}/{pass_index}/{key}") if self.s.train else None
        self.images.append(preprocess_uint8(img, self.s.image_size, self.s.train, rng))
        self.captions.append(caption)
        self.keys.append(key)
        self.shards.append(url)
        self.passes.append(pass_index)

    @property
    def full(self) -> bool:
        return len(self.keys) >= self.s.batch_size

    @property
    def pending(self) -> bool:
        return self.seen > 0

    @property
    def report_due(self) -> bool:
        """A bad sample was just added and makes a multiple of ``batch_size`` since the last commit. Counted
        from the commit (not from the last report) so a resumed worker reports at the same samples."""
        n_bad = self.seen - len(self.keys)
        return n_bad > 0 and n_bad % self.s.batch_size == 0 and self.last_added_bad

    def report(self) -> _Item:
        return _Item(
            worker=self.worker,
            commit=False,
            position=(-1, -1),
            seen=self.seen,
            bad=dict(self.bad),
            last_bad=self.last_bad,
            images_BCHW=None,
            tokens_BL=None,
            eot_index_B=None,
            keys=[],
            shards=[],
            passes=[],
        )

    def emit(self, position: tuple[int, int]) -> _Item:
        images = tokens = eot = None
        if self.keys:
            images_BHWC = torch.from_numpy(np.stack(self.images))
            b, h, w, c = images_BHWC.shape
            out = torch.empty(b, c, h, w, dtype=torch.float32)
            if get_worker_info() is not None:
                # Filled in shared memory: the DataLoader then sends the batch without copying it there first
                # (what torch's default_collate does for the same reason).
                out.share_memory_()
            images = normalize_BHWC(images_BHWC, out=out)
            batch = self.s.tokenizer(self.captions)
            tokens, eot = batch.tokens_BL, batch.eot_index_B
        item = _Item(
            worker=self.worker,
            commit=True,
            position=position,
            seen=self.seen,
            bad=dict(self.bad),
            last_bad=self.last_bad,
            images_BCHW=images,
            tokens_BL=tokens,
            eot_index_B=eot,
            keys=self.keys,
            shards=self.shards,
            passes=self.passes,
        )
        self._reset()
        self.suppress_reports = 0
        return item


class _ClipStream(IterableDataset):
    """One rank's sample stream; iterated in each DataLoader worker (or in-process when ``workers=0``)."""

    def __init__(
        self,
        *,
        shards: list[str],
        rank: int,
        world_size: int,
        num_workers: int,
        seed: int,
        train: bool,
        resampled: bool,
        shuffle_buffer: int,
        batch_size: int,
        image_size: int,
        tokenizer: Tokenizer,
        single_pass: bool,
    ) -> None:
        self.shards, self.rank, self.world_size, self.num_workers = shards, rank, world_size, num_workers
        self.seed, self.train, self.resampled, self.shuffle_buffer = seed, train, resampled, shuffle_buffer
        self.batch_size, self.image_size, self.tokenizer = batch_size, image_size, tokenizer
        self.single_pass = single_pass
        self.start: list[tuple[int, int, int]] = [(0, 0, 0)] * num_workers
        """Per logical worker: (pass, raw samples of that pass already consumed, provisional reports already
        delivered since that position; see :class:`_Item`)."""
        self.worker_offset = 0
        """DataLoader worker i runs logical worker (i + worker_offset) % num_workers."""

    def shards_for_pass(self, pass_index: int, worker: int) -> list[str]:
        """The shards logical ``worker`` of this rank reads in pass ``pass_index``."""
        if self.resampled:
            # With replacement, independently per (rank, worker); as many draws as a pass without resampling.
            tag = f"{self.seed}/{self.rank}/{self.world_size}/{self.num_workers}/{worker}/{pass_index}"
            rng = random.Random(f"resample/{tag}")
            return rng.choices(self.shards, k=math.ceil(len(self.shards) / (self.world_size * self.num_workers)))
        order = list(self.shards)
        if self.train:
            random.Random(f"shards/{self.seed}/{pass_index}").shuffle(order)  # same permutation on every rank
        return order[self.rank :: self.world_size][worker :: self.num_workers]

    def raw_samples(self, pass_index: int, worker: int) -> Iterator[dict[str, Any]]:
        """Undecoded samples (and read-error markers) of one pass, after the shuffle buffer."""
        samples = _read_shards(self.shards_for_pass(pass_index, worker))
        if not (self.train and self.shuffle_buffer > 1):
            return samples
        tag = f"{self.seed}/{self.rank}/{self.world_size}/{self.num_workers}/{worker}/{pass_index}"
        # The buffer is refilled from empty every pass: a position is then (pass, offset), and resuming replays
        # at most one pass. initial == bufsize: the first samples out are drawn from a full buffer.
        return wds.filters.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=random.Random(f"shuffle/{tag}"))(
            samples
        )

    def __iter__(self) -> Iterator[_Item]:
        info = get_worker_info()
        worker = ((info.id if info is not None else 0) + self.worker_offset) % self.num_workers
        pass_index, skip, delivered_reports = self.start[worker]
        builder = _BatchBuilder(self, worker)
        builder.suppress_reports = delivered_reports  # the replay meets them again: sent before the restart
        empty_passes = 0
        while True:
            raw = 0
            for sample in self.raw_samples(pass_index, worker):
                raw += 1
                if raw <= skip:
                    continue  # resume: already consumed by batches handed out before the restart
                builder.add(sample, pass_index)
                if builder.full:
                    yield builder.emit((pass_index, raw))
                elif builder.report_due:
                    if builder.suppress_reports:
                        builder.suppress_reports -= 1
                    else:
                        yield builder.report()
            empty_passes = empty_passes + 1 if raw == 0 else 0
            if empty_passes >= _MAX_EMPTY_PASSES:
                raise RuntimeError(
                    f"rank {self.rank} worker {worker}: {empty_passes} passes in a row read no sample from its "
                    f"shards (e.g. {self.shards_for_pass(pass_index, worker)[:3]}): are the shards empty?"
                )
            skip = 0
            pass_index += 1
            if self.single_pass:
                break
        if builder.pending:
            yield builder.emit((pass_index, 0))


def read_pairs(shards: str, *, image_size: int, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """The first ``limit`` (None = all) good image-caption pairs of ``shards`` in shard order, for evaluation:
    images as the eval loader makes them (shorter side to ``image_size``, center crop, CLIP-normalized) float32
    [N, 3, S, S], and the captions as stored. Bad samples are skipped with a warning (first 10, then a count)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    images: list[np.ndarray] = []
    captions: list[str] = []
    bad = 0
    for sample in _read_shards(expand_shards(shards)):
        try:
            img, caption = _decode_sample(sample, image_size)
        except _BadSample as e:
            bad += 1
            if bad <= LOG_FIRST_BAD:
                logger.warning("bad pair skipped: shard %s, key %s: %s", sample["__url__"], sample["__key__"], e)
            continue
        images.append(preprocess_uint8(img, image_size, train=False))
        captions.append(caption)
        if len(captions) == limit:
            break
    if bad > LOG_FIRST_BAD:
        logger.warning("%d bad pairs skipped in %s", bad, shards)
    if not captions:
        raise ValueError(f"no readable image-caption pair in {shards!r} ({bad} bad samples)")
    return normalize_BHWC(torch.from_numpy(np.stack(images))), captions


# ---------------------------------------------------------------------------------------------- trainer side


@dataclass(slots=True)
class ClipBatch:
    """One rank's micro-batch."""

    images_BCHW: torch.Tensor
    """CLIP-normalized float32 [B, 3, H, W]."""
    tokens_BL: torch.Tensor
    """Caption token ids, int64 [B, L], 0-padded after EOT."""
    eot_index_B: torch.Tensor
    """Position of EOT per row, int64 [B]."""
    keys: list[str]
    """Sample keys (``{key}.jpg`` in the shard), for tests and debugging."""
    shards: list[str]
    """Shard URL of each sample."""
    passes: list[int]
    """Shard pass each sample was read in (see the module docstring)."""

    def __len__(self) -> int:
        return len(self.keys)


def _empty_stats() -> dict[str, Any]:
    return {"seen": 0, "bad": 0, "bad_by_reason": {}, "last_bad": None}


class ClipLoader:
    """Infinite iterator of :class:`ClipBatch` for one rank (see the module docstring); built by
    :func:`build_clip_loader`. ``iter(loader)`` returns the loader itself: iterating again continues the
    stream. :meth:`close` stops the worker processes; iterating after it restarts them at the saved position."""

    def __init__(
        self,
        stream: _ClipStream,
        *,
        cfg: ClipDataConfig,
        layout: dict[str, Any],
        samples_per_epoch: int,
        batches_per_epoch: int,
    ) -> None:
        self._stream = stream
        self._cfg = cfg
        self._layout = layout
        self.samples_per_epoch = samples_per_epoch
        self.batches_per_epoch = batches_per_epoch
        self._positions: list[tuple[int, int, int]] = [(0, 0, 0)] * stream.num_workers
        """Per logical worker: (pass, raw, provisional reports since), see ``_ClipStream.start``."""
        self._next_worker = 0
        self._batches = 0
        self._stats = _empty_stats()
        self._provisional: dict[int, tuple[int, dict[str, int]]] = {}
        """Per worker: (seen, bad by reason) reported since its last committed item (budget check only)."""
        self._iterator: Iterator[_Item] | None = None
        self._exhausted = False

    @property
    def rank(self) -> int:
        return self._stream.rank

    @property
    def batches_yielded(self) -> int:
        """Batches handed out since the start of training (resumes included)."""
        return self._batches

    @property
    def epoch(self) -> int:
        """Epoch of the next batch: ``batches_yielded // batches_per_epoch``."""
        return self._batches // self.batches_per_epoch if self.batches_per_epoch else 0

    def __iter__(self) -> ClipLoader:
        return self

    def __next__(self) -> ClipBatch:
        if self._iterator is None:
            if self._exhausted:
                raise StopIteration
            self._iterator = iter(self._data_loader())
        while True:
            try:
                item = next(self._iterator)
            except StopIteration:
                self._exhausted, self._iterator = True, None
                raise
            self._commit(item)
            if item.keys:
                self._batches += 1
                return ClipBatch(
                    images_BCHW=item.images_BCHW,
                    tokens_BL=item.tokens_BL,
                    eot_index_B=item.eot_index_B,
                    keys=item.keys,
                    shards=item.shards,
                    passes=item.passes,
                )

    def _data_loader(self) -> DataLoader:
        self._stream.start = list(self._positions)
        self._stream.worker_offset = self._next_worker
        workers = self._cfg.workers
        return DataLoader(
            self._stream,
            batch_size=None,  # batches are built in the workers
            num_workers=workers,
            prefetch_factor=2 if workers else None,
            in_order=True,  # strict round-robin over workers: the resume position relies on it
        )

    def _commit(self, item: _Item) -> None:
        if not self._stream.single_pass and item.worker != self._next_worker:
            raise RuntimeError(f"internal: item from worker {item.worker}, expected worker {self._next_worker}")
        self._next_worker = (item.worker + 1) % self._stream.num_workers
        n_bad = sum(item.bad.values())
        if not item.commit:
            pass_index, raw, reports = self._positions[item.worker]
            self._positions[item.worker] = (pass_index, raw, reports + 1)
            self._provisional[item.worker] = (item.seen, item.bad)
            self._check_budget(item.last_bad)
            return
        self._provisional.pop(item.worker, None)
        self._positions[item.worker] = (*item.position, 0)
        stats = self._stats
        stats["seen"] += item.seen
        if n_bad:
            stats["bad"] += n_bad
            for reason, n in item.bad.items():
                stats["bad_by_reason"][reason] = stats["bad_by_reason"].get(reason, 0) + n
            stats["last_bad"] = item.last_bad
            self._check_budget(item.last_bad)

    def _check_budget(self, last: dict[str, str] | None) -> None:
        by_reason = Counter(self._stats["bad_by_reason"])
        for _, reported in self._provisional.values():
            by_reason.update(reported)
        seen = self._stats["seen"] + sum(n for n, _ in self._provisional.values())
        bad = by_reason.total()
        limit, fraction = self._cfg.max_bad_samples, self._cfg.max_bad_fraction
        if limit is not None and bad > limit:
            what = f"more than data.max_bad_samples={limit}"
        elif seen >= FRACTION_MIN_SEEN and bad / seen > fraction:
            what = f"a fraction {bad / seen:.4f} > data.max_bad_fraction={fraction}"
        else:
            return
        last = last or {}
        raise BadSampleBudgetExceeded(
            f"rank {self.rank}: {bad} bad samples of {seen} seen, {what} (by reason: {dict(by_reason)}); "
            f"last bad: shard {last.get('shard')} key {last.get('key')} ({last.get('reason')}: {last.get('detail')})"
        )

    def stats(self) -> dict[str, Any]:
        """Samples seen and dropped on this rank, as of the last batch handed out (JSON-serialisable)."""
        return {
            "seen": self._stats["seen"],
            "bad": self._stats["bad"],
            "bad_by_reason": dict(self._stats["bad_by_reason"]),
        }

    def state_dict(self) -> dict[str, Any]:
        """Position as of the last batch handed out (JSON-serialisable); pass it to :func:`build_clip_loader`.

        ``{"version", "rank", "layout": {world_size, workers, num_shards, shards_fingerprint, seed, resampled,
        shuffle_buffer, train}, "batches", "epoch", "batches_per_epoch", "next_worker", "positions": [[pass,
        raw, reports], ...], "stats": {seen, bad, bad_by_reason, last_bad}}``; ``positions`` has one entry per
        logical worker: shard pass, raw samples of it consumed after the shuffle buffer, provisional bad-sample
        reports sent since.
        """
        if self._stream.single_pass:
            raise ValueError("a single_pass loader (evaluation) has no resumable position")
        return {
            "version": STATE_VERSION,
            "rank": self.rank,
            "layout": dict(self._layout),
            "batches": self._batches,
            "epoch": self.epoch,
            "batches_per_epoch": self.batches_per_epoch,
            "next_worker": self._next_worker,
            "positions": [list(p) for p in self._positions],
            "stats": {**self._stats, "bad_by_reason": dict(self._stats["bad_by_reason"])},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (see :meth:`state_dict`; the module docstring says when it cannot)."""
        if self._iterator is not None:
            raise RuntimeError("load_state_dict must be called before iterating")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, expected {STATE_VERSION}")
        saved = state["layout"]
        changed = sorted(k for k in self._layout if saved.get(k) != self._layout[k])
        if not changed and state["rank"] != self.rank:
            raise ValueError(
                f"loader state was saved by rank {state['rank']}, loaded on rank {self.rank}: each rank needs "
                "its own state (gather every rank's state_dict into the checkpoint)"
            )
        if changed:
            epoch = int(state["epoch"]) + 1
            logger.warning(
                "rank %d: loader state saved with a different %s (%s, now %s): cannot continue mid-epoch; "
                "starting at the beginning of epoch %d with fresh bad-sample counts",
                self.rank, ", ".join(changed), {k: saved.get(k) for k in changed},
                {k: self._layout[k] for k in changed}, epoch,
            )  # fmt: skip
            self.start_at_epoch(epoch)
            return
        self._batches = int(state["batches"])
        self._positions = [(int(p), int(r), int(n)) for p, r, n in state["positions"]]
        self._next_worker = int(state["next_worker"])
        stats = state["stats"]
        self._stats = {
            "seen": int(stats["seen"]),
            "bad": int(stats["bad"]),
            "bad_by_reason": dict(stats["bad_by_reason"]),
            "last_bad": stats.get("last_bad"),
        }

    def start_at_epoch(self, epoch: int) -> None:
        """Start at the beginning of ``epoch`` (pass ``epoch`` on every rank) with fresh bad-sample counts: where
        to continue when the saved per-rank positions cannot be used (e.g. the world size changed)."""
        if self._iterator is not None:
            raise RuntimeError("start_at_epoch must be called before iterating")
        self._batches = epoch * self.batches_per_epoch
        self._positions = [(epoch, 0, 0)] * self._stream.num_workers
        self._next_worker = 0
        self._stats = _empty_stats()

    def close(self) -> None:
        """Stop the worker processes (the position is kept: iterating again restarts them there)."""
        self._iterator = None

    def __enter__(self) -> ClipLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_clip_loader(
    cfg: ClipDataConfig,
    *,
    shards: str,
    image_size: int,
    context_length: int,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    train: bool,
    state: dict[str, Any] | None = None,
    single_pass: bool = False,
) -> ClipLoader:
    """The loader of rank ``rank`` of ``world_size`` over ``shards`` (any form of :func:`expand_shards`).

    ``train``: shuffled passes, shuffle buffer and random resized crops; otherwise shards in order, no shuffle
    buffer, center crops. ``state``: a :meth:`ClipLoader.state_dict` of this rank to continue from.
    ``single_pass``: read every shard once (evaluation); iteration then ends, with a short last batch per worker.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if batch_size < 1 or image_size < 1:
        raise ValueError(f"batch_size and image_size must be >= 1, got {batch_size}, {image_size}")
    shard_list = expand_shards(shards)
    logical_workers = max(1, cfg.workers)
    if not cfg.resampled and len(shard_list) < world_size * logical_workers:
        raise ValueError(
            f"{len(shard_list)} shards in {shards!r} cannot feed {world_size} ranks x {logical_workers} workers: "
            "every (rank, worker) needs a shard per pass; use more shards, fewer data.workers or data.resampled=true"
        )
    samples_per_epoch = cfg.samples_per_epoch or count_samples(shard_list)
    batches_per_epoch = samples_per_epoch // (batch_size * world_size)
    if batches_per_epoch == 0 and not single_pass:
        raise ValueError(
            f"{samples_per_epoch} samples per epoch ({'data.samples_per_epoch' if cfg.samples_per_epoch else shards})"
            f" is less than one global batch ({batch_size} x {world_size} ranks)"
        )
    stream = _ClipStream(
        shards=shard_list,
        rank=rank,
        world_size=world_size,
        num_workers=logical_workers,
        seed=seed,
        train=train,
        resampled=cfg.resampled,
        shuffle_buffer=cfg.shuffle_buffer if train else 0,
        batch_size=batch_size,
        image_size=image_size,
        tokenizer=build_tokenizer(cfg.tokenizer, context_length, cfg.vocab_path),
        single_pass=single_pass,
    )
    layout = {
        "world_size": world_size,
        "workers": cfg.workers,
        "num_shards": len(shard_list),
        "shards_fingerprint": _fingerprint(shard_list),
        "seed": seed,
        "resampled": cfg.resampled,
        "shuffle_buffer": stream.shuffle_buffer,
        "train": train,
    }
    loader = ClipLoader(
        stream, cfg=cfg, layout=layout, samples_per_epoch=samples_per_epoch, batches_per_epoch=batches_per_epoch
    )
    if state is not None:
        loader.load_state_dict(state)
    return loader
