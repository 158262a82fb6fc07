"""HALC's fields of view: boxes grown exponentially around a detected box, clipped to the image, and their crops
resized to the model's input (seed 000, appendix A).

Box convention: [x0, y0, x1, y1] in pixels of the original image (x right, y down), as the scene world's
annotations and transformers' detectors return.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fov_boxes(box: list[float], width: int, height: int, n: int = 4, lam: float = 0.6) -> list[list[float]]:
    """n boxes centred on ``box``'s centre with sides (1 + lam)^i times its sides (i = 0..n-1), each clipped to the
    image (a box pushed past an edge is cut there, not shifted)."""
    if n < 1 or lam < 0:
        raise ValueError(f"need n >= 1 and lam >= 0, got n={n}, lam={lam}")
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {box} has no area")
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    out = []
    for i in range(n):
        s = (1 + lam) ** i
        out.append([max(0.0, cx - s * w / 2), max(0.0, cy - s * h / 2), min(float(width), cx + s * w / 2),
                    min(float(height), cy + s * h / 2)])  # fmt: skip
    return out


def random_box(width: int, height: int, generator: torch.Generator, min_frac: float = 0.2) -> list[float]:
    """A random box of at least ``min_frac`` of each side (HALC's FOVs when nothing is detected)."""
    u = torch.rand(4, generator=generator).tolist()
    w, h = width * (min_frac + (1 - min_frac) * u[0]), height * (min_frac + (1 - min_frac) * u[1])
    x0, y0 = (width - w) * u[2], (height - h) * u[3]
    return [x0, y0, x0 + w, y0 + h]


def crop_resize(pixels_CHW: torch.Tensor, boxes: list[list[float]], size: int) -> torch.Tensor:
    """[n, C, size, size]: each box cut out of a (normalized) image tensor and resized bilinearly; boxes are in the
    tensor's pixel coordinates, rounded outwards to whole pixels."""
    _, H, W = pixels_CHW.shape
    crops = []
    for x0, y0, x1, y1 in boxes:
        c0, r0 = max(0, int(x0)), max(0, int(y0))
        c1, r1 = min(W, max(c0 + 1, int(-(-x1 // 1)))), min(H, max(r0 + 1, int(-(-y1 // 1))))
        crop = pixels_CHW[:, r0:r1, c0:c1][None]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0])
    return torch.stack(crops)
