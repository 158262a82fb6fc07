"""Write image-caption WebDataset shards in the img2dataset layout: ``{key}.jpg``, ``{key}.txt``, ``{key}.json``.

Keys are 9 digits, shard number (5) then index in shard (4), as img2dataset writes them. Every shard is written to
``*.tar.tmp`` and renamed when complete, so a crash never leaves a shard that looks finished.

The captions file is CSV or TSV (chosen by extension, ``.tsv`` → tab) with a header naming an image column
(``image``, ``filename`` or ``file``) and a ``caption`` column; image paths are relative to the image folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from framework.data.errors import DataFormatError

IMAGE_COLUMNS = ("image", "filename", "file")


@dataclass(frozen=True, slots=True)
class CaptionRow:
    image: Path
    caption: str
    line: int


def read_captions(captions_file: str | Path, image_dir: str | Path) -> list[CaptionRow]:
    """Rows of the captions file; malformed rows raise :class:`DataFormatError` naming file and line."""
    path, image_dir = Path(captions_file), Path(image_dir)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path} (CSV/TSV with columns image,caption)")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = [h.strip().lower() for h in next(reader, [])]
        image_col = next((header.index(c) for c in IMAGE_COLUMNS if c in header), None)
        if image_col is None or "caption" not in header:
            raise DataFormatError(
                f"{path}, line 1: header must name an image column {IMAGE_COLUMNS} and 'caption', got {header}"
            )
        caption_col = header.index("caption")
        rows = []
        for line, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise DataFormatError(f"{path}, line {line}: expected {len(header)} fields, got {len(fields)}")
            caption = fields[caption_col].strip()
            if not caption:
                raise DataFormatError(f"{path}, line {line}: empty caption")
            rows.append(CaptionRow(image_dir / fields[image_col].strip(), caption, line))
    return rows


def _jpeg_bytes(image_path: Path, row: CaptionRow, captions_file: Path) -> tuple[bytes, int, int]:
    if not image_path.is_file():
        raise FileNotFoundError(f"{captions_file}, line {row.line}: image not found: {image_path}")
    try:
        with Image.open(image_path) as im:
            width, height = im.size
            if im.format == "JPEG":
                return image_path.read_bytes(), width, height  # keep the original bytes
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=95)
            return buf.getvalue(), width, height
    except (UnidentifiedImageError, OSError) as e:
        raise DataFormatError(f"{captions_file}, line {row.line}: cannot decode image {image_path}: {e}") from e


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


@dataclass(frozen=True, slots=True)
class ShardSample:
    """One sample of a shard: JPEG bytes, its caption, and the JSON metadata (``key`` is added on writing)."""

    jpeg: bytes
    caption: str
    meta: dict


def write_sample_shards(
    samples: Iterable[ShardSample],
    out_dir: str | Path,
    *,
    samples_per_shard: int = 1000,
    total: int | None = None,
    progress: bool = True,
    desc: str = "make-shards",
) -> list[Path]:
    """Write ``samples`` (consumed lazily, in order) to ``{out_dir}/{shard:05d}.tar``; returns the shard paths."""
    if samples_per_shard < 1 or samples_per_shard > 10_000:
        raise ValueError(f"samples_per_shard must be in [1, 10000] (4-digit index in the key), got {samples_per_shard}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
    tar, tmp, i = None, None, 0
    for n, sample in enumerate(samples):
        shard, i = divmod(n, samples_per_shard)
        if i == 0:
            if tar is not None:
                tar.close()
                os.replace(tmp, shards[-1])
            shards.append(out / f"{shard:05d}.tar")
            tmp = shards[-1].with_name(shards[-1].name + ".tmp")
            tar = tarfile.open(tmp, "w")
        key = f"{shard:05d}{i:04d}"
        _add(tar, f"{key}.jpg", sample.jpeg)
        _add(tar, f"{key}.txt", sample.caption.encode("utf-8"))
        _add(tar, f"{key}.json", json.dumps({"key": key, **sample.meta}).encode("utf-8"))
        bar.update(1)
    if tar is not None:
        tar.close()
        os.replace(tmp, shards[-1])
    bar.close()
    return shards


def write_shards(
    image_dir: str | Path,
    captions_file: str | Path,
    out_dir: str | Path,
    *,
    samples_per_shard: int = 1000,
    progress: bool = True,
) -> list[Path]:
    """Write shards ``{out_dir}/{shard:05d}.tar`` from an image folder and a captions file; returns their paths
    (``samples_per_shard`` is checked by :func:`write_sample_shards`)."""
    captions_file = Path(captions_file)
    rows = read_captions(captions_file, image_dir)
    if not rows:
        raise DataFormatError(f"{captions_file}: no caption rows")

    def samples() -> Iterator[ShardSample]:
        for row in rows:
            jpeg, width, height = _jpeg_bytes(row.image, row, captions_file)
            meta = {"caption": row.caption, "source": str(row.image.name), "width": width, "height": height}
            yield ShardSample(jpeg, row.caption, meta)

    return write_sample_shards(samples(), out_dir, samples_per_shard=samples_per_shard, total=len(rows),
                               progress=progress)  # fmt: skip
