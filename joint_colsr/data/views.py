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
    w, h = fallback_size(width, height, ratio)
    x0, y0 = (width - w) / 2, (height - h) / 2
    return x0, y0, x0 + w, y0 + h


def fallback_size(width: int, height: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """``(w, h)`` of the largest box of aspect ratio in ``ratio`` inside ``width x height``:
    the centred box a random resized crop falls back to when no attempt fits."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return width, width / ratio[0]
    if in_ratio > ratio[1]:
        return height * ratio[1], height
    return width, height


#: Uniform draws :func:`random_resized_boxes` takes per sample: (area, log-aspect) for each
#: of 10 attempts, then the box's left and top.
BOX_DRAWS = 22


def random_resized_boxes(
    u: np.ndarray, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], min_side: float = 0.0,
) -> np.ndarray:
    """:func:`random_resized_box` for a batch, from given uniforms instead of a generator.

    Same rule (up to 10 attempts at an area in ``scale`` and a log-uniform aspect in
    ``ratio``, grown to ``min_side``; the first attempt that fits wins; else the largest
    centred box of a ratio in the range), vectorised over the batch. The cache path's draw.

    Args:
        u: ``(B, BOX_DRAWS)`` uniforms in [0, 1).
        width, height: the image the boxes lie in, pixels.

    Returns:
        ``(B, 4)`` float64 boxes ``(left, top, right, bottom)`` in pixels.
    """
    u = np.asarray(u, np.float64)
    if u.ndim != 2 or u.shape[1] != BOX_DRAWS:
        raise ValueError(f"u must be (B, {BOX_DRAWS}) uniforms, got shape {u.shape}")
    attempts = u[:, : BOX_DRAWS - 2].reshape(len(u), -1, 2)
    target = width * height * (scale[0] + (scale[1] - scale[0]) * attempts[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * attempts[..., 1])
    w, h = np.sqrt(target * aspect), np.sqrt(target / aspect)
    short = np.minimum(w, h)
    grow = np.where((short > 0) & (short < min_side), min_side / np.where(short > 0, short, 1.0), 1.0)
    w, h = w * grow, h * grow
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = np.argmax(fits, axis=1)
    rows = np.arange(len(u))
    w, h, found = w[rows, first], h[rows, first], fits[rows, first]
    fw, fh = fallback_size(width, height, ratio)
    x0 = np.where(found, u[:, -2] * (width - w), (width - fw) / 2)
    y0 = np.where(found, u[:, -1] * (height - h), (height - fh) / 2)
    w, h = np.where(found, w, fw), np.where(found, h, fh)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def whole_pixel_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes rounded to whole pixels (each edge to the nearest pixel edge, kept inside the image).

    A box whose sides are at least ``n`` pixels keeps sides of at least ``n`` whole pixels
    (rounding both edges the same way), so a crop that was not enlarged is still not.

    Args:
        boxes: ``(B, 4)`` float ``(left, top, right, bottom)`` pixels inside ``width x height``.

    Returns:
        ``(B, 4)`` int64, ``0 <= left < right <= width``, ``0 <= top < bottom <= height``.
    """
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (B, 4), got shape {boxes.shape}")
    out = np.floor(boxes + 0.5).astype(np.int64)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    out[:, 2] = np.maximum(out[:, 2], np.minimum(out[:, 0] + 1, width))
    out[:, 0] = np.minimum(out[:, 0], out[:, 2] - 1)
    out[:, 3] = np.maximum(out[:, 3], np.minimum(out[:, 1] + 1, height))
    out[:, 1] = np.minimum(out[:, 1], out[:, 3] - 1)
    return out


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


def squash_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """The whole photo ``(H, W, 3)`` uint8 squash-resized to ``(size, size, 3)`` uint8 (:func:`resize_box` of :data:`WHOLE`)."""
    return resize_box(rgb, view_box(WHOLE, rgb.shape[1], rgb.shape[0]), size)


def resize_box(rgb: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Crop ``box`` (pixels) out of ``rgb`` ``(H, W, 3)`` uint8 and resize it to
    ``(size, size, 3)`` uint8 (PIL bicubic, antialiased)."""
    img = Image.fromarray(rgb)
    out = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(out, dtype=np.uint8)
