"""Datasets of reference images: decode, crop, resize to ``S x S`` RGB uint8. Nothing else.

Colour conversion does not happen here: workers move only uint8 (4x less than float32),
and LAB runs on the device (see :meth:`ColSRDataModule.on_after_batch_transfer`).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from joint_colsr.data.decode import ImageDecodeError, unusable_reason
from joint_colsr.data.sampler import sample_seed
from joint_colsr.data.sources import USABLE_HELP, ImageItem

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # (left, top, right, bottom), fractions of width/height

#: Deterministic validation views: the whole image (the evaluation protocol: squash-resize),
#: then crops of 2/3 of each side at the centre and the four corners.
VALIDATION_VIEWS: tuple[Box, ...] = (
    (0.0, 0.0, 1.0, 1.0),
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
) -> tuple[float, float, float, float]:
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


def resize_box(rgb: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Crop ``box`` (pixels) out of ``rgb`` and resize it to ``size x size`` (bicubic, antialiased)."""
    img = Image.fromarray(rgb)
    out = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(out, dtype=np.uint8)


class ReferenceImages(Dataset):
    """Reference images (``S x S`` RGB uint8) made from photographs.

    Training (``train=True``): each sample is photo ``index % len(items)``, either a random
    resized crop (``train_crop="random_resized"``; no side under ``output_size`` source pixels,
    so a target is never a crop enlarged beyond its source resolution) or the whole photo
    squash-resized (``"whole"``: the paper's recipe), with a random horizontal flip when
    ``hflip``; all drawn from the sample seed. ``length`` sets how many samples make an
    epoch (few photos, many crops).

    Validation (``train=False``): photo ``index // len(views)`` seen through the fixed
    view ``index % len(views)``: deterministic.

    Indexing takes ``index`` or ``(index, sample_seed)`` (what :class:`EpochSeededSampler`
    yields). A photo that fails to decode, or that :func:`unusable_reason` rejects
    (grayscale, tiny, extreme aspect ratio), is skipped (the next photo is used) and
    counted in the sample's ``skipped`` field, so a bad file never ends an epoch. Each
    skipped file is logged once per process with its reason.

    Args:
        label_columns: COCO category id -> column; when given, samples carry ``labels``,
            a ``(num_classes,)`` uint8 multi-hot vector of the photo's categories.
        exclude_grayscale, min_side, max_aspect: see :func:`unusable_reason`.

    Returns:
        dict with ``rgb``: ``(3, S, S)`` uint8 tensor; ``index``: int; ``skipped``: int;
        and ``labels`` when ``label_columns`` is given.
    """

    def __init__(
        self,
        items: Sequence[ImageItem],
        output_size: int,
        train: bool,
        length: int | None = None,
        views: Sequence[Box] = (VALIDATION_VIEWS[0],),
        crop_scale: tuple[float, float] = (0.25, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        label_columns: dict[int, int] | None = None,
        exclude_grayscale: bool = True,
        min_side: int = 16,
        max_aspect: float = 10.0,
        train_crop: str = "random_resized",
    ) -> None:
        if not items:
            raise ValueError("ReferenceImages needs at least one image item")
        if train_crop not in TRAIN_CROPS:
            raise ValueError(f"data.train_crop must be one of {', '.join(TRAIN_CROPS)}, got {train_crop!r}")
        self.train_crop = train_crop
        self.items = list(items)
        self.output_size = int(output_size)
        self.train = train
        self.views = tuple(views)
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.hflip = hflip
        default_length = len(self.items) if train else len(self.items) * len(self.views)
        self.length = int(length) if length else default_length
        self.label_columns = label_columns
        self.exclude_grayscale = exclude_grayscale
        self.min_side = int(min_side)
        self.max_aspect = float(max_aspect)
        self._logged: set[str] = set()

    def __len__(self) -> int:
        return self.length

    def _item_and_view(self, index: int) -> tuple[int, Box | None]:
        if self.train:
            return index % len(self.items), None
        return index // len(self.views), self.views[index % len(self.views)]

    def _make(self, rgb: np.ndarray, view: Box | None, rng: np.random.Generator) -> np.ndarray:
        height, width = rgb.shape[:2]
        if view is None and self.train_crop == "random_resized":
            box = random_resized_box(rng, width, height, self.crop_scale, self.crop_ratio, min_side=self.output_size)
        elif view is None:
            box = (0.0, 0.0, float(width), float(height))
        else:
            box = (view[0] * width, view[1] * height, view[2] * width, view[3] * height)
        out = resize_box(rgb, box, self.output_size)
        if view is None and self.hflip and rng.random() < 0.5:
            out = out[:, ::-1]
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = (key if isinstance(key, tuple) else (key, sample_seed(0, 0, key)))
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        item_idx, view = self._item_and_view(index)
        skipped, unusable = 0, []
        for attempt in range(len(self.items)):
            item = self.items[(item_idx + attempt) % len(self.items)]
            try:
                rgb = item.load()
            except ImageDecodeError as err:
                reason = err.reason
            else:
                reason = unusable_reason(rgb, self.min_side, self.max_aspect, self.exclude_grayscale)
                if reason is None:
                    break
            skipped += 1
            unusable.append(f"{item.path or item.key}: {reason}")
            if item.key not in self._logged:
                self._logged.add(item.key)
                log.warning("skipping %s: %s", item.path or item.key, reason)
        else:
            more = f"\n  ... and {len(unusable) - 20} more" if len(unusable) > 20 else ""
            raise RuntimeError(f"none of the {len(self.items)} photos of this {'training' if self.train else 'validation'} "
                               "split could be decoded and used:\n  " + "\n  ".join(unusable[:20]) + more + "\n" + USABLE_HELP)
        out = self._make(rgb, view, np.random.default_rng(seed))
        sample = {
            "rgb": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))),
            "index": index,
            "skipped": skipped,
        }
        if self.label_columns is not None:
            sample["labels"] = multi_hot(item.labels, self.label_columns)
        return sample


def multi_hot(labels: Sequence[int], columns: dict[int, int]) -> torch.Tensor:
    """``(num_classes,)`` uint8 vector with ones at the columns of ``labels`` (category ids)."""
    out = torch.zeros(len(columns), dtype=torch.uint8)
    for label in labels:
        out[columns[label]] = 1
    return out

