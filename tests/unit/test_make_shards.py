"""make-shards: img2dataset-layout tar shards from an image folder + captions file, with clear errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framework.data.clip.shards import write_shards
from framework.data.errors import DataFormatError
from launch.cli import main as cli_main


def _images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        arr = np.full((12 + i, 16, 3), (20 * i) % 256, dtype=np.uint8)
        name = f"img{i}.png" if i % 2 else f"img{i}.jpg"
        Image.fromarray(arr).save(folder / name)
        names.append(name)
    return names


def _captions(path: Path, names: list[str], sep: str = "\t") -> Path:
    path.write_text("image" + sep + "caption\n" + "".join(f"{n}{sep}a photo number {i}\n" for i, n in enumerate(names)))
    return path


def _members(shard: Path) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_layout_keys_and_contents(tmp_path: Path) -> None:
    names = _images(tmp_path / "imgs", 5)
    shards = write_shards(tmp_path / "imgs", _captions(tmp_path / "c.tsv", names), tmp_path / "out",
                          samples_per_shard=2, progress=False)  # fmt: skip
    assert [s.name for s in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    assert not list((tmp_path / "out").glob("*.tmp"))
    first, last = _members(shards[0]), _members(shards[2])
    assert sorted(first) == [
        "000000000.jpg",
        "000000000.json",
        "000000000.txt",
        "000000001.jpg",
        "000000001.json",
        "000000001.txt",
    ]
    assert sorted(last) == ["000020000.jpg", "000020000.json", "000020000.txt"]
    assert first["000000001.txt"].decode() == "a photo number 1"
    meta = json.loads(first["000000001.json"])
    assert meta == {"key": "000000001", "caption": "a photo number 1", "source": "img1.png", "width": 16, "height": 13}
    # PNG sources are re-encoded as JPEG; JPEG sources keep their bytes.
    assert Image.open(io.BytesIO(first["000000001.jpg"])).format == "JPEG"
    assert first["000000000.jpg"] == (tmp_path / "imgs" / "img0.jpg").read_bytes()


def test_cli_make_shards_with_csv(tmp_path: Path) -> None:
    names = _images(tmp_path / "imgs", 3)
    captions = _captions(tmp_path / "c.csv", names, sep=",")
    rc = cli_main(["make-shards", "--images", str(tmp_path / "imgs"), "--captions", str(captions),
                   "--out", str(tmp_path / "out"), "--samples-per-shard", "10"])  # fmt: skip
    assert rc == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.tar"]
    assert len(_members(tmp_path / "out" / "00000.tar")) == 9


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    names = _images(tmp_path / "imgs", 2)
    bad = tmp_path / "bad.tsv"
    bad.write_text(f"image\tcaption\n{names[0]}\tok\n{names[1]}\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv, line 3: expected 2 fields"):
        write_shards(tmp_path / "imgs", bad, tmp_path / "o", progress=False)
    missing = tmp_path / "missing.tsv"
    missing.write_text("image\tcaption\nnope.jpg\thello\n")
    with pytest.raises(FileNotFoundError, match=r"missing.tsv, line 2: image not found"):
        write_shards(tmp_path / "imgs", missing, tmp_path / "o", progress=False)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    broken = tmp_path / "broken.tsv"
    broken.write_text("image\tcaption\nbroken.jpg\thello\n")
    with pytest.raises(DataFormatError, match=r"broken.tsv, line 2: cannot decode image"):
        write_shards(tmp_path / "imgs", broken, tmp_path / "o", progress=False)
    header = tmp_path / "header.tsv"
    header.write_text("path\ttext\n")
    with pytest.raises(DataFormatError, match="line 1: header"):
        write_shards(tmp_path / "imgs", header, tmp_path / "o", progress=False)
