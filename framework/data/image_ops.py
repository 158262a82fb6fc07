"""Image decode and CLIP preprocessing with PIL + torch (no torchvision: it has no CPU build here).

Eval: resize the shorter side to ``size`` (bicubic) and center-crop. Train: random resized crop with scale
(0.9, 1.0) and aspect (3/4, 4/3) as open_clip does, then resize to ``size``. Both normalize with CLIP's mean/std.
JPEGs are decoded with PIL's draft mode (DCT scaling) when the stored image is at least twice the target size,
which is where most of the decode time goes.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def decode_image(data: bytes, min_size: int | None = None) -> Image.Image:
    """Decode image bytes to RGB; raises on truncated/corrupt data (PIL's errors, fully loaded here)."""
    img = Image.open(io.BytesIO(data))
    if min_size is not None and img.format == "JPEG":
        img.draft("RGB", (min_size, min_size))  # keeps both sides >= min_size
    img.load()
    return img.convert("RGB") if img.mode != "RGB" else img


def _to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return t.sub_(mean).div_(std)


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def random_resized_crop(
    img: Image.Image,
    size: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
    return center_crop_resize(img, size)


def preprocess(img: Image.Image, size: int, train: bool = False, rng: random.Random | None = None) -> torch.Tensor:
    """PIL image -> normalized float tensor [3, size, size]."""
    if train:
        img = random_resized_crop(img, size, rng or random.Random())
    else:
        img = center_crop_resize(img, size)
    return _to_tensor(img)
