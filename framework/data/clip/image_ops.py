"""Image decode and CLIP preprocessing with PIL + torch (no torchvision: it has no CPU build here).

Eval: resize the shorter side to ``size`` (bicubic) and center-crop. Train: random resized crop with scale
(0.9, 1.0) and aspect (3/4, 4/3) as open_clip does, then resize to ``size``. Both normalize with CLIP's mean/std.
JPEGs are decoded with PIL's draft mode (DCT scaling) when the stored image is at least twice the target size,
which is where most of the decode time goes.

Crop and resize are one PIL call (``resize(..., box=...)``): PIL resamples only the box, and no intermediate image
is allocated. The loader keeps images as uint8 HWC arrays (:func:`preprocess_uint8`) until a whole batch is
stacked, then converts and normalizes the batch in one pass (:func:`normalize_BHWC`): a quarter of the bytes
cross the worker → trainer queue, and the float math runs on large contiguous tensors instead of per image.

Shapes: B batch, C channels (3), H/W height/width.
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

# (x / 255 - mean) / std == x * scale + shift, folded so normalization is one multiply-add per element.
_SCALE_C = torch.tensor([1.0 / (255.0 * s) for s in CLIP_STD])
_SHIFT_C = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)])


def decode_image(data: bytes, min_size: int | None = None) -> Image.Image:
    """Decode image bytes to RGB; raises on truncated/corrupt data (PIL's errors, fully loaded here).

    ``min_size``: for JPEGs, let libjpeg decode at a reduced scale (1/2, 1/4, 1/8) as long as both sides stay
    >= ``min_size``; a no-op for images smaller than twice ``min_size``.
    """
    img = Image.open(io.BytesIO(data))
    if min_size is not None and img.format == "JPEG":
        img.draft("RGB", (min_size, min_size))  # keeps both sides >= min_size
    img.load()
    return img.convert("RGB") if img.mode != "RGB" else img


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` and center crop, as one resample of the central square-ish box."""
    w, h = img.size
    scale = size / min(w, h)
    # The box in source pixels that maps onto the size x size output (float box: no rounding drift).
    bw, bh = size / scale, size / scale
    left, top = (w - bw) / 2, (h - bh) / 2
    return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + bw, top + bh))


def random_resized_crop(
    img: Image.Image,
    size: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    """torchvision's RandomResizedCrop with a caller-owned ``rng`` (10 tries, then center crop)."""
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


def preprocess_uint8(img: Image.Image, size: int, train: bool = False, rng: random.Random | None = None) -> np.ndarray:
    """PIL image -> cropped, resized uint8 array [size, size, 3] (not normalized; see :func:`normalize_BHWC`)."""
    if train:
        img = random_resized_crop(img, size, rng or random.Random())
    else:
        img = center_crop_resize(img, size)
    return np.asarray(img, dtype=np.uint8)


def normalize_BHWC(images_BHWC: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> CLIP-normalized float32 [B, 3, H, W] (contiguous NCHW), into ``out`` if given
    (e.g. a shared-memory tensor in a DataLoader worker, so sending the batch costs no extra copy)."""
    if images_BHWC.dtype != torch.uint8 or images_BHWC.dim() != 4 or images_BHWC.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B, H, W, 3], got {images_BHWC.dtype} {tuple(images_BHWC.shape)}")
    b, h, w, c = images_BHWC.shape
    if out is None:
        out = torch.empty(b, c, h, w, dtype=torch.float32)
    elif out.shape != (b, c, h, w) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be contiguous float32 {(b, c, h, w)}, got {out.dtype} {tuple(out.shape)}")
    # Measured fastest on CPU among one-pass alternatives (mul with type promotion, addcmul, channels-last math):
    # one strided copy that also converts, then two in-place passes over contiguous memory.
    out.copy_(images_BHWC.permute(0, 3, 1, 2))
    return out.mul_(_SCALE_C.view(1, 3, 1, 1)).add_(_SHIFT_C.view(1, 3, 1, 1))


def preprocess(img: Image.Image, size: int, train: bool = False, rng: random.Random | None = None) -> torch.Tensor:
    """PIL image -> normalized float tensor [3, size, size]."""
    arr_HWC = preprocess_uint8(img, size, train, rng)
    return normalize_BHWC(torch.from_numpy(arr_HWC.copy())[None])[0]
