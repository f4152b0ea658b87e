"""Datasets of reference images (``S x S`` RGB uint8), from photo files or from a decoded cache.

Colour conversion does not happen here: workers move only uint8 (4x less than float32),
and LAB runs on the device (see :meth:`ColSRDataModule.on_after_batch_transfer`).

Both datasets share :class:`ReferenceSamples`: which photo and view a sample index means,
the crop and flip settings, the sample dict. The photo-file dataset draws each sample's
crop and flip from a numpy generator seeded by :func:`sample_seed` and resamples on the
CPU; the cache dataset plans whole batches from counter-based draws
(:func:`sample_uniforms`) and leaves crops and flips to the model's device.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from joint_colsr.data.decode import ImageDecodeError, unusable_reason
from joint_colsr.data.exemplars import NONE, OTHER, ExemplarPlan
from joint_colsr.data.geometry import augment
from joint_colsr.data.sampler import sample_keys, sample_seed, sample_uniforms
from joint_colsr.data.scales import scale_uniform
from joint_colsr.data.sources import USABLE_HELP, ImageItem
from joint_colsr.data.views import (
    BOX_DRAWS,
    TRAIN_CROPS,
    VALIDATION_VIEWS,
    WHOLE,
    Box,
    random_resized_boxes,
    resize_box,
    squash_resize,
    training_box,
    view_box,
    whole_pixel_boxes,
)

if TYPE_CHECKING:
    from joint_colsr.data.cache.store import CacheSplit

log = logging.getLogger(__name__)

#: Draw of a cache training sample's key that decides its flip (the box takes the next ``BOX_DRAWS``).
FLIP_DRAW = 0


class ReferenceSamples(Dataset):
    """What sample ``index`` of an epoch is, whatever holds the photos.

    Training (``train=True``): each sample is photo ``index % num_photos``, either a random
    resized crop (``train_crop="random_resized"``; no side under ``output_size`` source
    pixels, so a target is never a crop enlarged beyond its source resolution) or the whole
    photo squash-resized (``"whole"``: the paper's recipe), with a random horizontal flip
    when ``hflip``; all drawn from the sample seed. ``length`` sets how many samples make
    an epoch (few photos, many crops).

    Validation (``train=False``): photo ``index // len(views)`` seen through the fixed
    view ``index % len(views)``: deterministic.

    Indexing takes ``index`` or ``(index, sample_seed)`` (what :class:`EpochSeededSampler`
    yields).

    Args:
        label_columns: COCO category id -> column; when given, samples carry ``labels``,
            a ``(num_classes,)`` uint8 multi-hot vector of the photo's categories.
    """

    def __init__(
        self,
        num_photos: int,
        output_size: int,
        train: bool,
        length: int | None = None,
        views: Sequence[Box] = (WHOLE,),
        crop_scale: tuple[float, float] = (0.25, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        label_columns: dict[int, int] | None = None,
        train_crop: str = "random_resized",
    ) -> None:
        if train_crop not in TRAIN_CROPS:
            raise ValueError(f"data.train_crop must be one of {', '.join(TRAIN_CROPS)}, got {train_crop!r}")
        self.num_photos = int(num_photos)
        self.output_size = int(output_size)
        self.train = train
        self.views = tuple(views)
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.hflip = hflip
        self.train_crop = train_crop
        self.label_columns = label_columns
        default_length = self.num_photos if train else self.num_photos * len(self.views)
        self.length = int(length) if length else default_length
        #: Training samples carry ``scale_u``, their batch's scale draw (any-scale training;
        #: set by the data module). :func:`collate_samples` keeps the first sample's.
        self.draw_scale = False
        #: Which exemplar each sample gets (set by the data module; None: no exemplars), and their side.
        self.exemplars: ExemplarPlan | None = None
        self.exemplar_size = 256

    def __len__(self) -> int:
        return self.length

    def sample_key(self, key: int | tuple[int, int]) -> int:
        """The sample key (seed) of ``index`` or ``(index, key)``."""
        return key[1] if isinstance(key, tuple) else sample_seed(0, 0, key)

    def exemplar_key(self, key: int | tuple[int, int]) -> int:
        """The key a sample's exemplar is drawn from: its sample key in training; in validation
        its index alone (the same exemplar at every validation)."""
        return self.sample_key(key) if self.train else sample_seed(0, 0, key[0] if isinstance(key, tuple) else key)

    def plan_exemplars(self, photos: Sequence[int], keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`ExemplarPlan.plan` of samples showing ``photos`` (``exemplar_key`` s ``keys``)."""
        return self.exemplars.plan(np.asarray(photos, np.int64), np.asarray([int(k) % 2**64 for k in keys], np.uint64))

    def locate(self, key: int | tuple[int, int]) -> tuple[int, int, Box | None, np.random.Generator]:
        """``(index, photo, view or None (training), rng)`` of one sample key."""
        index, seed = (key if isinstance(key, tuple) else (key, sample_seed(0, 0, key)))
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        if self.train:
            return index, index % self.num_photos, None, np.random.default_rng(seed)
        return index, index // len(self.views), self.views[index % len(self.views)], np.random.default_rng(seed)

    def box(self, rng: np.random.Generator, width: int, height: int, view: Box | None) -> Box:
        """The sample's box in a ``width x height`` image: its view, or a training box drawn from ``rng``."""
        if view is not None:
            return view_box(view, width, height)
        return training_box(rng, width, height, self.train_crop, self.output_size, self.crop_scale, self.crop_ratio)

    def flip(self, rng: np.random.Generator) -> bool:
        """Whether a training sample is flipped (drawn after its box)."""
        return bool(self.train and self.hflip and rng.random() < 0.5)

    def labels(self, categories: Sequence[int]) -> torch.Tensor:
        return multi_hot(categories, self.label_columns)


class ReferenceImages(ReferenceSamples):
    """Reference images decoded from photo files (see :class:`ReferenceSamples` for the samples).

    A photo that fails to decode, or that :func:`unusable_reason` rejects (grayscale, tiny,
    extreme aspect ratio), is skipped (the next photo is used) and counted in the sample's
    ``skipped`` field, so a bad file never ends an epoch. Each skipped file is logged once
    per process with its reason.

    Args:
        items: the photos.
        exclude_grayscale, min_side, max_aspect: see :func:`unusable_reason`.
        others: see :class:`ReferenceSamples`.

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
        views: Sequence[Box] = (WHOLE,),
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
        super().__init__(len(items), output_size, train, length, views, crop_scale, crop_ratio, hflip, label_columns, train_crop)
        self.items = list(items)
        self.exclude_grayscale = exclude_grayscale
        self.min_side = int(min_side)
        self.max_aspect = float(max_aspect)
        self._logged: set[str] = set()

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, photo, view, rng = self.locate(key)
        skipped, unusable = 0, []
        for attempt in range(len(self.items)):
            item = self.items[(photo + attempt) % len(self.items)]
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
        height, width = rgb.shape[:2]
        out = resize_box(rgb, self.box(rng, width, height, view), self.output_size)
        if self.flip(rng):
            out = out[:, ::-1]
        sample = {"rgb": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))), "index": index, "skipped": skipped}
        if self.train and self.draw_scale:
            sample["scale_u"] = scale_uniform(self.sample_key(key))
        if self.exemplars is not None and self.exemplars.active:
            sample.update(self._exemplar_fields(photo, key))
        if self.label_columns is not None:
            sample["labels"] = self.labels(item.labels)
        return sample

    def _exemplar_fields(self, photo: int, key: int | tuple[int, int]) -> dict:
        """A sample's exemplar fields: ``exemplar_kind``, ``exemplar_theta``, ``exemplar_index``
        (the other photo, -1 if none), ``exemplar_other`` ``(3, E, E)`` uint8 (that photo
        squash-resized; zeros unless ``OTHER``) and ``exemplar_skipped`` (1: the other photo
        could not be decoded or has no colour; the sample then has none), plus ``exemplar_bend``
        (the warp's spline shifts) with ``data.exemplar_warp=tps``."""
        kinds, others, thetas, bends = self.plan_exemplars([photo], [self.exemplar_key(key)])
        kind, other, skipped = int(kinds[0]), int(others[0]), 0
        image = np.zeros((3, self.exemplar_size, self.exemplar_size), np.uint8)
        if kind == OTHER:
            item = self.items[other]
            try:
                rgb = item.load()
                reason = unusable_reason(rgb, self.min_side, self.max_aspect, True)
            except ImageDecodeError as err:
                reason = err.reason
            if reason is None:
                image = squash_resize(rgb, self.exemplar_size).transpose(2, 0, 1)
            else:
                if f"exemplar:{item.key}" not in self._logged:
                    self._logged.add(f"exemplar:{item.key}")
                    log.warning("exemplar %s not used: %s (its samples have no exemplar)", item.path or item.key, reason)
                kind, other, skipped = NONE, -1, 1
        fields = {"exemplar_kind": kind, "exemplar_theta": torch.from_numpy(thetas[0]), "exemplar_index": other,
                  "exemplar_other": torch.from_numpy(np.ascontiguousarray(image)), "exemplar_skipped": skipped}
        if bends is not None:
            fields["exemplar_bend"] = torch.from_numpy(bends[0])
        return fields


class CachedImages(ReferenceSamples):
    """Reference images read from a cache split (see :class:`ReferenceSamples` for the samples).

    Training: a random resized crop only when the cached side exceeds ``output_size`` and
    ``train_crop="random_resized"`` (no side under ``output_size`` cached pixels: never an
    enlarged crop); else the cached image itself (resized down when cached larger); and the
    flip. The training geometry is planned here, on the host, for whole batches
    (:meth:`training_plan`: boxes in whole pixels and flip flags drawn from the sample keys
    of :func:`sample_keys`) and applied by :func:`joint_colsr.data.geometry.augment`: on the
    model's device for batches of :class:`~joint_colsr.data.loaders.CachedBatchLoader`, on the
    CPU for the per-sample API (``ds[(index, key)]``: the same image). A training key is
    ``index`` (key of seed 0, epoch 0) or ``(index, key)`` with a 64-bit sample key.

    Validation: view ``k`` of photo ``p`` is the image the cache stored for it, byte for
    byte what :class:`ReferenceImages` makes from the file (``preprocess val_views=N``
    stores the first N views; asking for more is an error naming the rebuild command).
    """

    def __init__(
        self,
        split: CacheSplit,
        output_size: int,
        train: bool,
        length: int | None = None,
        views: Sequence[Box] = (WHOLE,),
        crop_scale: tuple[float, float] = (0.25, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        label_columns: dict[int, int] | None = None,
        train_crop: str = "random_resized",
    ) -> None:
        if len(split) == 0:
            raise ValueError(f"cache split '{split.name}' holds no images")
        if not train and tuple(tuple(v) for v in views) != split.view_boxes[: len(views)]:
            raise ValueError(
                f"data.val_views={len(views)} from cache {split.root}, which stores {split.views} view(s) per validation "
                f"photo: use data.val_views<={split.views}, or rebuild the cache with val_views={len(views)} "
                f"(python -m joint_colsr.preprocess ... cache_dir={split.root} val_views={len(views)} overwrite=true)"
            )
        super().__init__(len(split), output_size, train, length, views, crop_scale, crop_ratio, hflip, label_columns, train_crop)
        self.split = split
        #: Whether training crops (else the whole cached image is used).
        self.crop = train and split.size > self.output_size and train_crop == "random_resized"
        self._label_matrix: np.ndarray | None = None

    # -- training: planned per batch on the host, applied on the device ------------------------

    def training_plan(self, indices: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Where training samples ``indices`` (with sample keys ``keys``) come from, vectorised.

        Returns:
            ``photos``: ``(B,)`` int64 cached image of each sample; ``boxes``: ``(B, 4)`` int64
            whole-pixel crop boxes in the cached image, or None (the cached image is the
            sample: cached at the output size and not cropped); ``flips``: ``(B,)`` bool, or
            None without ``hflip``. Draw ``FLIP_DRAW`` of a key decides its flip, the next
            ``BOX_DRAWS`` its box.
        """
        if not self.train:
            raise RuntimeError("training_plan is for a training dataset")
        indices = np.asarray(indices, np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.length):
            raise IndexError(f"indices out of range for {self.length} samples")
        photos = indices % self.num_photos
        u = sample_uniforms(keys, 1 + BOX_DRAWS if self.crop else 1)
        side = self.split.size
        if self.crop:
            boxes = whole_pixel_boxes(random_resized_boxes(u[:, 1:], side, side, self.crop_scale, self.crop_ratio,
                                                           min_side=self.output_size), side, side)
        elif side != self.output_size:  # the whole cached image, resized down
            boxes = np.tile(np.array([[0, 0, side, side]], np.int64), (len(indices), 1))
        else:
            boxes = None
        flips = u[:, FLIP_DRAW] < 0.5 if self.hflip else None
        return photos, boxes, flips

    def label_matrix(self) -> np.ndarray:
        """``(num_photos, num_classes)`` uint8 multi-hot labels of every cached photo (built once)."""
        if self._label_matrix is None:
            matrix = np.zeros((self.num_photos, len(self.label_columns)), np.uint8)
            for photo, labels in enumerate(self.split.labels):
                matrix[photo, [self.label_columns[label] for label in labels]] = 1
            self._label_matrix = matrix
        return self._label_matrix

    def _training_batch(self, keys: Sequence[int | tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Training samples ``keys`` gathered and augmented on the CPU (the per-sample API)."""
        pairs = [k if isinstance(k, tuple) else (k, None) for k in keys]
        indices = np.array([i for i, _ in pairs], np.int64)
        default = sample_keys(0, 0, indices)
        sample_key = np.array([default[n] if key is None else key for n, (_, key) in enumerate(pairs)], np.uint64)
        photos, boxes, flips = self.training_plan(indices, sample_key)
        rgb = np.empty((len(photos), 3, self.split.size, self.split.size), np.uint8)
        self.split.gather(photos, rgb)
        out = augment(torch.from_numpy(rgb), self.output_size, None if flips is None else torch.from_numpy(flips), boxes)
        batch = {"rgb": out, "index": torch.from_numpy(indices), "skipped": torch.zeros(len(indices), dtype=torch.long)}
        if self.label_columns is not None:
            batch["labels"] = torch.from_numpy(self.label_matrix()[photos])
        if self.exemplars is not None and self.exemplars.active:
            batch.update(self.exemplar_fields(photos, sample_key, lambda rows, out: self.split.gather(rows, out), self.split.size))
        return batch

    def exemplar_fields(self, photos: np.ndarray, keys: Sequence[int], gather, side: int) -> dict[str, torch.Tensor]:
        """The exemplar fields of cached samples with exemplar keys ``keys`` (:meth:`exemplar_key`;
        see :meth:`ReferenceImages._exemplar_fields`):
        ``exemplar_other`` ``(B, 3, side, side)`` holds the other photos (as cached; the
        sample's own photo in rows without one), resized to ``exemplar_size`` on the device.
        ``gather(rows, out)`` copies cached photos ``rows`` into ``out``."""
        kinds, others, thetas, bends = self.plan_exemplars(photos, keys)
        images = np.empty((len(photos), 3, side, side), np.uint8)
        gather(np.where(kinds == OTHER, others, photos).astype(np.int64), images)
        fields = {"exemplar_kind": torch.from_numpy(kinds), "exemplar_theta": torch.from_numpy(thetas),
                  "exemplar_index": torch.from_numpy(others), "exemplar_other": torch.from_numpy(images),
                  "exemplar_skipped": torch.zeros(len(photos), dtype=torch.long)}
        if bends is not None:
            fields["exemplar_bend"] = torch.from_numpy(bends)
        return fields

    # -- validation: fixed views --------------------------------------------------------------

    def stored_view(self, key: int | tuple[int, int]) -> tuple[int, int, int]:
        """Validation: ``(index, photo, view number)`` of one sample key; the cache holds that image."""
        index, photo, _, _ = self.locate(key)
        return index, photo, index % len(self.views)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if self.train:
            return {k: v[0] if k != "index" and k != "skipped" else int(v[0]) for k, v in self._training_batch([key]).items()}
        return self._validation_batch([key], collated=False)

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> dict[str, torch.Tensor]:
        """A whole batch, already collated (the DataLoader's batched fetch): the same samples
        as ``__getitem__``, key by key. In a worker the batch tensor is allocated in shared
        memory (what ``default_collate`` does) so it crosses to the main process without
        another copy. (Training from a cache goes through :class:`CachedBatchLoader` instead.)"""
        if self.train:
            return self._training_batch(keys)
        return self._validation_batch(keys, collated=True)

    def _validation_batch(self, keys: Sequence[int | tuple[int, int]], collated: bool) -> dict:
        """The stored views of ``keys``: a collated batch, or (``collated=False``, one key) one sample."""
        planned = [self.stored_view(k) for k in keys]
        rgb = torch.empty((len(planned), 3, self.output_size, self.output_size), dtype=torch.uint8)
        if collated and torch.utils.data.get_worker_info() is not None:
            rgb.share_memory_()
        out = rgb.numpy()
        for i, (_, photo, view) in enumerate(planned):
            out[i] = self.split.image(photo, view)
        labels = [self.labels(self.split.labels[photo]) for _, photo, _ in planned] if self.label_columns is not None else None
        exemplar = None
        if self.exemplars is not None and self.exemplars.active:
            def gather(rows: np.ndarray, out: np.ndarray) -> None:  # each other photo's whole view (view 0)
                for i, row in enumerate(rows):
                    out[i] = self.split.image(int(row), 0)

            exemplar = self.exemplar_fields(np.array([p[1] for p in planned], np.int64),
                                            [self.exemplar_key(p[0]) for p in planned], gather, self.output_size)
        if not collated:
            sample = {"rgb": rgb[0], "index": planned[0][0], "skipped": 0}
            if exemplar is not None:
                sample.update({k: (v[0] if k in ("exemplar_theta", "exemplar_other", "exemplar_bend") else int(v[0])) for k, v in exemplar.items()})
            return sample if labels is None else {**sample, "labels": labels[0]}
        batch = {"rgb": rgb, "index": torch.tensor([p[0] for p in planned]), "skipped": torch.zeros(len(planned), dtype=torch.long)}
        if exemplar is not None:
            batch.update(exemplar)
        return batch if labels is None else {**batch, "labels": torch.stack(labels)}


def multi_hot(labels: Sequence[int], columns: dict[int, int]) -> torch.Tensor:
    """``(num_classes,)`` uint8 vector with ones at the columns of ``labels`` (category ids)."""
    out = torch.zeros(len(columns), dtype=torch.uint8)
    for label in labels:
        out[columns[label]] = 1
    return out


def collate_samples(data: list[dict] | dict) -> dict:
    """``default_collate``, except for a batch a dataset's ``__getitems__`` already collated."""
    if isinstance(data, dict):
        return data
    draws = [sample.pop("scale_u") for sample in data if isinstance(sample, dict) and "scale_u" in sample]
    batch = default_collate(data)
    if draws:  # one scale per batch: the first sample's draw, a Python float (no tensor to move or read back)
        batch["scale_u"] = float(draws[0])
    return batch


__all__ = ["VALIDATION_VIEWS", "CachedImages", "ReferenceImages", "ReferenceSamples", "collate_samples", "multi_hot"]
