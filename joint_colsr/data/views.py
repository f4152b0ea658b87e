"""Where a sample comes from inside its photo: crop boxes, validation views, the crop+resize.

A *view* is a box in fractions of the photo ``(left, top, right, bottom)``; a *box* is
the same in pixels. Training draws a box (a random resized crop, or the whole photo) and
a flip from the sample's seed; validation uses fixed views. File-backed and cache-backed
datasets both plan samples here, so the two paths cannot drift apart.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # (left, top, right, bottom)

#: The whole photo: the evaluation protocol's view (squash-resize to ``S x S``).
WHOLE: Box = (0.0, 0.0, 1.0, 1.0)

#: Deterministic validation views: the whole image (the evaluation protocol: squash-resize),
#: then crops of 2/3 of each side at the centre and the four corners.
VALIDATION_VIEWS: tuple[Box, ...] = (
    WHOLE,
    (1 / 6, 1 / 6, 5 / 6, 5 / 6),
    (0.0, 0.0, 2 / 3, 2 / 3),
    (1 / 3, 0.0, 1.0, 2 / 3),
    (0.0, 1 / 3, 2 / 3, 1.0),
    (1 / 3, 1 / 3, 1.0, 1.0),
)

#: Training crop modes: a random resized crop (``data.crop_scale``) or the whole photo
#: squash-resized to the output size (the paper's recipe).
TRAIN_CROPS = ("random_resized", "whole")


def random_resized_box(
    rng: np.random.Generator, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
    min_side: float = 0.0,
) -> Box:
    """A crop box in pixels covering ``scale`` of the area with aspect ratio in ``ratio``
    (log-uniform), as torchvision's ``RandomResizedCrop`` draws it; falls back to the
    largest centred box of a ratio inside the range.

    ``min_side``: no side of the box is shorter than this (the output size): a box drawn
    smaller is grown, keeping its aspect, so a crop is never *enlarged* to the target
    (that would make a blurred "high-resolution" target). On a photo too small for that
    the fallback box is used (the whole photo is then enlarged, as validation does).
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = math.sqrt(target * aspect)
        h = math.sqrt(target / aspect)
        if 0 < min(w, h) < min_side:
            grow = min_side / min(w, h)
            w, h = w * grow, h * grow
        if 0 < w <= width and 0 < h <= height:
            x0 = rng.uniform(0, width - w)
            y0 = rng.uniform(0, height - h)
            return x0, y0, x0 + w, y0 + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, width / ratio[0]
    elif in_ratio > ratio[1]:
        w, h = height * ratio[1], height
    else:
        w, h = width, height
    x0, y0 = (width - w) / 2, (height - h) / 2
    return x0, y0, x0 + w, y0 + h


def view_box(view: Box, width: int, height: int) -> Box:
    """A view (fractions) as a box in pixels of a ``width x height`` photo."""
    return view[0] * width, view[1] * height, view[2] * width, view[3] * height


def training_box(rng: np.random.Generator, width: int, height: int, train_crop: str, output_size: int,
                 crop_scale: tuple[float, float], crop_ratio: tuple[float, float]) -> Box:
    """The box of one training sample in a ``width x height`` photo, drawn from ``rng``:
    a random resized crop (no side under ``output_size`` pixels) or the whole photo."""
    if train_crop == "random_resized":
        return random_resized_box(rng, width, height, crop_scale, crop_ratio, min_side=output_size)
    if train_crop == "whole":
        return 0.0, 0.0, float(width), float(height)
    raise ValueError(f"data.train_crop must be one of {', '.join(TRAIN_CROPS)}, got {train_crop!r}")


def resize_box(rgb: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Crop ``box`` (pixels) out of ``rgb`` ``(H, W, 3)`` uint8 and resize it to
    ``(size, size, 3)`` uint8 (PIL bicubic, antialiased)."""
    img = Image.fromarray(rgb)
    out = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(out, dtype=np.uint8)
