"""The LightningDataModule: sources -> uint8 reference images -> LAB batches on the device."""

from __future__ import annotations

import logging
import os
import random
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from joint_colsr.color import resize_uint8, rgb_uint8_to_lab_batch
from joint_colsr.data.cache import ImageCache
from joint_colsr.data.datasets import CachedImages, ReferenceImages, collate_samples
from joint_colsr.data.exemplars import EVAL_EXEMPLARS, TRAIN_EXEMPLARS, WARPS, ExemplarPlan, exemplar_batch, side_of
from joint_colsr.data.geometry import augment
from joint_colsr.data.loaders import CachedBatchLoader, ResumableDataLoader
from joint_colsr.data.sampler import EpochSeededSampler
from joint_colsr.data.scales import check_scale_range, check_scales, scale_from_uniform, scale_label, target_side
from joint_colsr.data.sources import ImageSource
from joint_colsr.data.views import TRAIN_CROPS, VALIDATION_VIEWS
from joint_colsr.run.preemption import ignore_preemption_signals_in_worker

log = logging.getLogger(__name__)


class ColSRDataModule(pl.LightningDataModule):
    """Reference images from any :class:`ImageSource`, as the joint task needs them.

    From photo files, workers decode and resize to ``output_size`` RGB uint8 and move only
    uint8. From a cache, :class:`CachedBatchLoader` gathers the cached images (one copy
    each, by a thread) and :meth:`on_after_batch_transfer` crops and flips them on the
    device. There, each batch then becomes float32 L*a*b* with
    kornia (outside autocast): ``l_lowres`` (input at ``input_size``), ``l_highres`` and
    ``ab_target`` (at ``output_size``), and ``rgb_target`` (uint8, for metrics).

    Args:
        source: where the photos come from; it split them by photo.
        batch_size: per device.
        num_workers: DataLoader worker processes (0: decode in the main process); the
            photo-file path and validation use them; training from a cache needs none.
        input_size: side of the low-resolution L* input (96 in the paper).
        output_size: side of the reference image and the a*b* target (256 in the paper).
        lowres_interpolation: how L* is downscaled: bicubic, bilinear or area (antialiased).
        train_samples_per_epoch: random crops per training epoch (default: one per photo).
        val_views: fixed views per validation photo: 1 (the whole image, squash-resized:
            the evaluation protocol) up to 6 (plus centre and corner crops of 2/3 side).
        crop_scale: area range of training crops (a crop never has a side under
            ``output_size`` source pixels: no target is an enlarged crop).
        hflip: random horizontal flips in training.
        train_crop: ``random_resized`` (crops of ``crop_scale``) or ``whole`` (the whole photo
            squash-resized to ``output_size``: the paper's recipe, ``experiment=paper``).
        seed: base seed of sample order and augmentation (``None``: drawn and logged).
        root: the folder a file-based source reads (informational; the source uses it).
        categories, max_images: COCO selection keys (informational, like ``root``: the
            config passes them on to the source, which uses them).
        pin_memory: pin host memory when training on a GPU.
        cache: folder of a decoded-image cache built from this source
            (``python -m joint_colsr.preprocess``); read instead of decoding files.
        cache_verify: how the cache is checked when opened: quick, full (sha256) or none.
        with_labels: batches carry ``labels``, a ``(B, num_classes)`` float multi-hot
            tensor of the photo's categories (sources with categories: COCO).
        exclude_grayscale: skip photos without colour (also those stored as RGB).
        min_side: skip photos whose shorter side is below this.
        max_aspect: skip photos more elongated than this (longer / shorter side).
        cache_gather_threads: threads copying each cached training batch (see
            :class:`CachedBatchLoader`). Default 2: on the project's 2-core VM one thread
            reached 0.21 to 0.43 of the memcpy roof, two 0.56 to 0.80
            (``python -m joint_colsr.bench.loader``, docs/data.md). They copy only while the ring has room.
        scale_range: ``[min, max]`` magnifications of any-scale training (null: the one scale
            ``output_size / input_size``). Each training batch draws one scale ``s`` (see
            :mod:`joint_colsr.data.scales`) and its targets are the reference images resized
            down to ``round(input_size * s)`` by the suite's bicubic, so ``output_size`` must
            reach ``input_size * max`` (checked here): no target is ever enlarged.
        val_scales: the scales validation scores (each a full pass over the validation
            images); default with ``scale_range``: its two ends. Validation batches then carry
            ``by_scale``: ``{label: LAB batch}`` (:func:`~joint_colsr.data.scales.scale_label`).
        exemplar: the exemplars of training samples (:mod:`joint_colsr.data.exemplars`):
            ``none`` (default), ``warped_self``, ``same_category`` (sources with categories),
            ``random`` or ``mix``. Batches then also carry ``exemplar`` ``(B, 3, E, E)``
            normalized L*a*b*, ``exemplar_mask`` ``(B,)`` bool, ``exemplar_rgb`` (uint8) and
            ``exemplar_index`` (the other photo, -1 if none).
        exemplar_drop: probability that a training sample has no exemplar (both modes in one model).
        exemplar_size: side ``E`` every exemplar is resized to (an exemplar of another size is resized).
        exemplar_warp: how training's ``warped_self`` exemplars are warped: ``affine``
            (default) or ``tps`` (a thin-plate spline bends them before the affine map).
            Validation and evaluation (``warped_gt``) always use the affine warp, so their
            rows compare across models trained either way.
        val_exemplar: the exemplars of validation (and evaluation): ``none``, ``warped_gt``
            (the target warped: its colours, an upper bound), ``same_category`` or ``random``
            (another photo of the split, never the sample's own).
    """

    def __init__(
        self,
        source: ImageSource | None,
        batch_size: int = 16,
        num_workers: int = 2,
        input_size: int = 96,
        output_size: int = 256,
        lowres_interpolation: str = "bicubic",
        train_samples_per_epoch: int | None = None,
        val_views: int = 1,
        crop_scale: Sequence[float] = (0.25, 1.0),
        hflip: bool = True,
        seed: int | None = 0,
        train_crop: str = "random_resized",
        root: str | None = None,
        categories: Sequence[str] | None = None,
        max_images: int | None = None,
        pin_memory: bool = True,
        cache: str | None = None,
        cache_verify: str = "quick",
        with_labels: bool = False,
        exclude_grayscale: bool = True,
        min_side: int = 16,
        max_aspect: float = 10.0,
        cache_gather_threads: int = 2,
        scale_range: Sequence[float] | None = None,
        val_scales: Sequence[float] | None = None,
        exemplar: str = "none",
        exemplar_drop: float = 0.0,
        exemplar_size: int | None = 256,
        val_exemplar: str = "none",
        exemplar_warp: str = "affine",
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        if not 1 <= input_size <= output_size:
            raise ValueError(f"data.input_size ({input_size}) must be in [1, data.output_size ({output_size})]")
        if not 1 <= val_views <= len(VALIDATION_VIEWS):
            raise ValueError(f"data.val_views must be in [1, {len(VALIDATION_VIEWS)}], got {val_views}")
        if lowres_interpolation not in ("bicubic", "bilinear", "area"):
            raise ValueError(f"data.lowres_interpolation must be bicubic, bilinear or area, got {lowres_interpolation!r}")
        if source is None and not cache:
            raise ValueError("data.source is missing: set data.root, or data.cache=DIR to train from a decoded-image cache alone")
        self.source = source
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.input_size = input_size
        self.output_size = output_size
        self.lowres_interpolation = lowres_interpolation
        if train_samples_per_epoch is not None and (isinstance(train_samples_per_epoch, bool) or not isinstance(train_samples_per_epoch, int)
                                                    or train_samples_per_epoch < 1):
            raise ValueError(f"data.train_samples_per_epoch must be a positive integer or null (one per photo), "
                             f"got {train_samples_per_epoch!r}")
        self.train_samples_per_epoch = train_samples_per_epoch
        self.val_views = val_views
        try:
            low, high = (float(v) for v in crop_scale)
        except (TypeError, ValueError):
            low = high = float("nan")
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"data.crop_scale must be [min, max] area fractions with 0 < min <= max <= 1, got {list(crop_scale)!r}")
        self.crop_scale = (low, high)
        self.hflip = hflip
        if train_crop not in TRAIN_CROPS:
            raise ValueError(f"data.train_crop must be one of {', '.join(TRAIN_CROPS)}, got {train_crop!r}")
        self.train_crop = train_crop
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
            log.info("data.seed is null: drew sample seed %d", seed)
        self.seed = int(seed)
        if cache_verify not in ("quick", "full", "none"):
            raise ValueError(f"data.cache_verify must be quick, full or none, got {cache_verify!r}")
        if isinstance(cache_gather_threads, bool) or not isinstance(cache_gather_threads, int) or cache_gather_threads < 1:
            raise ValueError(f"data.cache_gather_threads must be a positive integer, got {cache_gather_threads!r}")
        self.cache_gather_threads = cache_gather_threads
        #: ``(min, max)`` scales of any-scale training, or None (one scale).
        self.scale_range = None if scale_range is None else check_scale_range(scale_range, input_size, output_size)
        if val_scales is not None and self.scale_range is None:
            raise ValueError("data.val_scales needs data.scale_range (any-scale training); eval takes scales=[...] for any model")
        if self.scale_range is not None and val_scales is None:
            val_scales = sorted(set(self.scale_range))
        if exemplar not in TRAIN_EXEMPLARS:
            raise ValueError(f"data.exemplar must be one of {', '.join(TRAIN_EXEMPLARS)}, got {exemplar!r}")
        if val_exemplar not in EVAL_EXEMPLARS:
            raise ValueError(f"data.val_exemplar must be one of {', '.join(EVAL_EXEMPLARS)}, got {val_exemplar!r}")
        if not 0.0 <= float(exemplar_drop) <= 1.0:
            raise ValueError(f"data.exemplar_drop must be in [0, 1], got {exemplar_drop}")
        if exemplar_warp not in WARPS:
            raise ValueError(f"data.exemplar_warp must be one of {', '.join(WARPS)}, got {exemplar_warp!r}")
        self.exemplar_warp = exemplar_warp
        self.exemplar, self.val_exemplar, self.exemplar_drop = exemplar, val_exemplar, float(exemplar_drop)
        self.exemplar_size = side_of(exemplar_size, output_size)
        #: Scales validation scores (any-scale training), or None.
        self.val_scales = None if val_scales is None else check_scales(val_scales, "data.val_scales", input_size, output_size)
        if min_side < 1 or max_aspect < 1:
            raise ValueError(f"data.min_side ({min_side}) and data.max_aspect ({max_aspect}) must be >= 1")
        self.root = root
        self.selection = {"categories": categories, "max_images": max_images}
        self.pin_memory = pin_memory
        self.cache = cache
        self.cache_verify = cache_verify
        self.with_labels = with_labels
        self.filters = {"exclude_grayscale": bool(exclude_grayscale), "min_side": int(min_side), "max_aspect": float(max_aspect)}
        #: Label id -> ``{"name", "supercategory"}`` (COCO), known after :meth:`setup`.
        self.categories: dict[int, dict[str, str]] = {}
        self.train_set: ReferenceImages | CachedImages | None = None
        self.val_set: ReferenceImages | CachedImages | None = None
        #: The decoded-image cache read (``data.cache``), once :meth:`setup` opened it.
        self.image_cache: ImageCache | None = None
        self._samplers: dict[str, EpochSeededSampler] = {}
        #: Run the device-side LAB conversion through torch.compile (set by ``speed.compile``).
        self.compile_lab_conversion = False

    # -- datasets ---------------------------------------------------------------------------

    @property
    def source_name(self) -> str:
        """The source's name, or the cache's folder when training from a cache alone."""
        return self.source.name if self.source is not None else f"cache {self.cache}"

    @property
    def num_classes(self) -> int:
        """Width of the ``labels`` multi-hot vector (0 for sources without categories)."""
        return len(self.categories)

    def _label_columns(self) -> dict[int, int] | None:
        if not self.with_labels:
            return None
        if not self.categories:
            raise ValueError(f"data.with_labels=true needs a source with categories (coco); '{self.source_name}' has none")
        return {cat: col for col, cat in enumerate(sorted(self.categories))}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or (stage not in (None, "fit") and self.val_set is not None):
            return
        if self.cache:
            self._setup_from_cache(stage)
            return
        if stage in (None, "fit"):
            train_items, val_items = self.source.split()
        else:  # validate / test / predict: only what validates (eval on COCO never reads train2017)
            train_items, val_items = [], self.source.validation_items()
        self.categories = self.source.categories
        columns = self._label_columns()
        if stage in (None, "fit") and not train_items:
            raise RuntimeError(f"data source '{self.source.name}' has no training images after the split")
        if not val_items:
            raise RuntimeError(f"data source '{self.source.name}' has no validation images after the split")
        if train_items:
            self.train_set = ReferenceImages(
                train_items, self.output_size, train=True, length=self.train_samples_per_epoch,
                crop_scale=self.crop_scale, hflip=self.hflip, label_columns=columns, train_crop=self.train_crop, **self.filters,
            )
            self.train_set.draw_scale = self.scale_range is not None
        self.val_set = ReferenceImages(val_items, self.output_size, train=False, views=VALIDATION_VIEWS[: self.val_views],
                                       label_columns=columns, **self.filters)
        self._attach_exemplars(lambda items: [item.labels for item in items], train_items, val_items)
        log.info(
            "data '%s': %d training photos (%d samples/epoch), %d validation photos (%d samples)",
            self.source.name, len(train_items), len(self.train_set) if self.train_set else 0, len(val_items), len(self.val_set),
        )

    def _setup_from_cache(self, stage: str | None) -> None:
        splits = ("train", "val") if stage in (None, "fit") else ("val",)
        cache = ImageCache.open(self.cache, verify=self.cache_verify, splits=splits)
        self.image_cache = cache
        cache.check_matches(self.source, self.output_size)
        if self.source is None:
            log.info("data.root not set: training from cache %s alone (built from %s)", cache.root, cache.index["source"])
        built = cache.index["filters"]
        if built != self.filters:
            log.warning("data.cache=%s was built with filters %s, the data config asks for %s: the cache's apply", self.cache, built, self.filters)
        self.categories = cache.categories
        columns = self._label_columns()
        if "train" in cache.splits:
            train = cache.splits["train"]
            self.train_set = CachedImages(train, self.output_size, train=True, length=self.train_samples_per_epoch,
                                          crop_scale=self.crop_scale, hflip=self.hflip, label_columns=columns,
                                          train_crop=self.train_crop)
            self.train_set.draw_scale = self.scale_range is not None
            log.info("training from cache %s: %dx%d images; augmentation: %s%s", cache.root, train.size, train.size,
                     "random resized crop" if self.train_set.crop else "whole photo", " + flip" if self.hflip else "")
        self.val_set = CachedImages(cache.splits["val"], self.output_size, train=False,
                                    views=VALIDATION_VIEWS[: self.val_views], label_columns=columns)
        self._attach_exemplars(lambda split: list(split.labels), cache.splits.get("train"), cache.splits["val"])

    def _attach_exemplars(self, labels_of, train_photos: Any, val_photos: Any) -> None:
        """Give the datasets their :class:`ExemplarPlan` (``labels_of(photos)``: each photo's category ids)."""
        def groups(photos: Any) -> list[list[str]] | None:
            if not self.categories:
                return None
            return [sorted({self.categories[c]["supercategory"] for c in (labels or ()) if c in self.categories})
                    for labels in labels_of(photos)]

        for dataset, kind, photos, drop, warp in ((self.train_set, self.exemplar, train_photos, self.exemplar_drop, self.exemplar_warp),
                                                  (self.val_set, self.val_exemplar, val_photos, 0.0, "affine")):
            if dataset is None or kind == "none":
                continue
            try:
                dataset.exemplars = ExemplarPlan(kind, dataset.num_photos, groups(photos), drop, warp)
            except ValueError as err:
                key = "data.exemplar" if dataset is self.train_set else "data.val_exemplar"
                raise ValueError(f"{key}={kind}: {err}") from None
            dataset.exemplar_size = self.exemplar_size

    # -- loaders ----------------------------------------------------------------------------

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _batches_done(self) -> int:
        """Training batches this rank finished in the current epoch (Lightning's own count)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _epoch_batches(self) -> float:
        """Training batches per epoch after ``trainer.limit_train_batches`` (Lightning's count)."""
        return self.trainer.num_training_batches if self.trainer is not None else float("inf")

    def _loader(self, dataset: ReferenceImages | CachedImages, split: str, shuffle: bool) -> DataLoader | CachedBatchLoader:
        rank, world = self._rank_world()
        sampler = EpochSeededSampler(len(dataset), shuffle=shuffle, seed=self.seed, rank=rank, world_size=world)
        # The epoch must be right before the first iterator exists: Lightning creates it (and
        # worker processes start drawing indices) before it calls set_epoch, and on a resume
        # that first iterator is the one used. Same value Lightning passes to set_epoch.
        sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0)
        self._samplers[split] = sampler
        on_gpu = self.trainer is not None and self.trainer.accelerator is not None and self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
        drop_last = shuffle and len(sampler) >= 2 * self.batch_size
        extra = {"batches_done": self._batches_done, "epoch_batches": self._epoch_batches} if split == "train" else {}
        if split == "train" and isinstance(dataset, CachedImages):
            # One copy per image, by a thread of this process: no workers (data.num_workers
            # serves the file path and validation).
            return CachedBatchLoader(dataset, sampler, self.batch_size, drop_last, self.pin_memory and on_gpu, **extra,
                                     gather_threads=self.cache_gather_threads)
        loader_cls = ResumableDataLoader if split == "train" else DataLoader
        # Validation's workers persist only when training has no worker processes of its own
        # (the cache path, or validate/test alone): else num_workers=16 kept 32 processes alive.
        persistent = self.num_workers > 0 and (split == "train" or not self._training_has_workers())
        return loader_cls(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and on_gpu,
            drop_last=drop_last,
            persistent_workers=persistent,
            collate_fn=collate_samples,
            # Each worker gets one torch thread: workers only resize uint8 images.
            worker_init_fn=_single_thread_worker,
            **extra,
        )

    def _training_has_workers(self) -> bool:
        """Whether a training loader of this module runs worker processes (the file path with workers)."""
        training = self.trainer is not None and self.trainer.state.fn == "fit"
        return training and self.num_workers > 0 and isinstance(self.train_set, ReferenceImages)

    def train_dataloader(self) -> DataLoader | CachedBatchLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    # -- device-side conversion ------------------------------------------------------------

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "rgb" in batch:
            rgb = batch["rgb"]
            if "slot" in batch:  # a CachedBatchLoader batch: still its buffer's contents?
                batch["slot"].check(batch["generation"])
                if rgb.is_cuda:
                    batch["slot"].transferred()  # the buffer may be refilled once this copy is done
            side = self.output_size
            if self.scale_range is not None and batch.get("scale_u") is not None:  # any-scale training: this batch's scale
                side = target_side(self.input_size, scale_from_uniform(batch["scale_u"], self.scale_range))
            if "flip" in batch or "boxes" in batch:  # a cache batch: crop and flip here, on the device
                # At output_size, then (any-scale) resized to the batch's side as on the file path:
                # one crop size per run keeps geometry's weight bank to one entry.
                rgb = augment(rgb, self.output_size, batch.get("flip"), batch.get("boxes"))
            exemplar = {}
            if "exemplar_kind" in batch:  # exemplars: the warp of this reference image, or another photo
                exemplar = exemplar_batch(rgb, batch["exemplar_kind"], batch["exemplar_theta"], batch.get("exemplar_other"),
                                          self.exemplar_size, batch.get("exemplar_bend"))
                exemplar["exemplar_index"] = batch["exemplar_index"]
                exemplar["exemplar_skipped"] = batch["exemplar_skipped"]
            if batch.get("scale_u") is None and self.val_scales is not None:  # validation of any-scale training
                lab = {"by_scale": {scale_label(s): self.lab_batch(resize_uint8(rgb, (target_side(self.input_size, s),) * 2))
                                    for s in self.val_scales}}
                for sub in lab["by_scale"].values():
                    sub.update(exemplar)
            else:
                lab = self.lab_batch(resize_uint8(rgb, (side, side)))
            lab.update(exemplar)
            lab["index"] = batch["index"]
            lab["skipped"] = batch["skipped"]
            if "labels" in batch:
                lab["labels"] = batch["labels"].float()  # moved as uint8, used as float
            return lab
        return batch

    def lab_batch(self, rgb: torch.Tensor) -> Any:
        """``(B, 3, S, S)`` uint8 reference images -> the LAB batch at their size (input at ``input_size``)."""
        return rgb_uint8_to_lab_batch(rgb, self.input_size, self.lowres_interpolation, compiled=self.compile_lab_conversion)


def _single_thread_worker(worker_id: int) -> None:
    torch.set_num_threads(1)
    ignore_preemption_signals_in_worker()
    os.environ["OMP_NUM_THREADS"] = "1"
