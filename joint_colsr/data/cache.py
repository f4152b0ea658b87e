"""A cache of decoded reference images: memory-mapped uint8 shards plus a JSON index.

Decoding a COCO JPEG and resizing it costs ~10 ms of a CPU core; reading the same
256x256 image from a memory-mapped shard costs ~0.1 ms. ``python -m joint_colsr.preprocess``
builds the cache once; ``data.cache=DIR`` makes :class:`ColSRDataModule` read it, so no
epoch decodes a JPEG.

Layout of ``DIR``::

    index.json            meta (source description, sizes, filters) and, per split, the
                          shards written so far: file, item range, kept keys and labels,
                          excluded files with reasons, byte size and sha256
    train-00000.npy ...   (n, 3, T, T) uint8, channels first (the layout a batch has)
    val-00000.npy ...     (n, 3, S, S) uint8, S = data.output_size

What is stored: the validation split holds exactly the reference images of the evaluation
protocol (the whole photo squash-resized to S x S, antialiased bicubic). The training
split holds the whole photo squash-resized to T x T (``train_size``, default S). Training
augmentation then works on the cached image: at T = S a random horizontal flip only (no
resampling, so no blur enters the super-resolution target); at T > S a random resized
crop (``data.crop_scale``) resized down to S, plus the flip.

Building is resumable: shards are written to a temporary name, fsynced and renamed, and
the index is rewritten (atomically) after each shard, so an interrupted build continues
at the first missing shard. Opening verifies structure (every shard present, its .npy
header and byte size as indexed; ``verify="full"`` also checks each shard's sha256).
Photos that cannot be used (unreadable, grayscale, tiny, extreme aspect ratio) are
excluded at build time and counted in the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from joint_colsr.data.datasets import TRAIN_CROPS, VALIDATION_VIEWS, Box, multi_hot, random_resized_box, resize_box
from joint_colsr.data.decode import ImageDecodeError, count_reasons, unusable_reason
from joint_colsr.data.sampler import sample_seed
from joint_colsr.data.sources import ImageItem, ImageSource
from joint_colsr.outputs import atomic_write

log = logging.getLogger(__name__)

CACHE_VERSION = 1
INDEX_NAME = "index.json"
SPLITS = ("train", "val")

BUILD_HELP = "build it with: python -m joint_colsr.preprocess data=<source> [data.root=DIR] cache_dir=DIR"


class CacheError(RuntimeError):
    """A cache that cannot be read as asked; the message names the folder and what to do."""


# ---------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepare:
    """Picklable per-item work for the build pool: decode, filter, squash-resize, CHW."""

    size: int
    min_side: int
    max_aspect: float
    exclude_grayscale: bool

    def __call__(self, item: ImageItem) -> tuple[np.ndarray | None, str | None]:
        try:
            rgb = item.load()
        except ImageDecodeError as err:
            return None, err.reason
        reason = unusable_reason(rgb, self.min_side, self.max_aspect, self.exclude_grayscale)
        if reason is not None:
            return None, reason
        height, width = rgb.shape[:2]
        out = resize_box(rgb, (0.0, 0.0, float(width), float(height)), self.size)
        return np.ascontiguousarray(out.transpose(2, 0, 1)), None


def _write_index(path: Path, index: dict[str, Any]) -> None:
    with atomic_write(path) as f:
        json.dump(index, f)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


#: How decoding treats colour profiles; a cache built before it converted them lacks the key.
COLOUR_HANDLING = "embedded ICC profiles converted to sRGB (LittleCMS, relative colorimetric)"


def _build_meta(source: ImageSource, output_size: int, train_size: int, shard_size: int,
                min_side: int, max_aspect: float, exclude_grayscale: bool, val_size: int | None = None) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "source": source.describe(),
        "output_size": int(output_size),
        "sizes": {"train": int(train_size), "val": int(val_size or output_size)},
        "layout": "NCHW uint8 sRGB, whole photo squash-resized (antialiased bicubic)",
        "colour": COLOUR_HANDLING,
        "filters": {"min_side": int(min_side), "max_aspect": float(max_aspect), "exclude_grayscale": bool(exclude_grayscale)},
        "shard_size": int(shard_size),
    }


def build_cache(
    source: ImageSource,
    cache_dir: str | os.PathLike,
    output_size: int = 256,
    train_size: int | None = None,
    shard_size: int = 1024,
    num_workers: int = 0,
    splits: Sequence[str] = SPLITS,
    min_side: int = 16,
    max_aspect: float = 10.0,
    exclude_grayscale: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    max_shards: int | None = None,
    val_size: int | None = None,
) -> dict[str, Any]:
    """Decode every photo of ``source`` into a cache at ``cache_dir`` (resuming a partial one).

    Args:
        source: any :class:`ImageSource`; its own split decides which photos go where.
        cache_dir: the cache folder (created).
        output_size: ``S``, side of the reference images (``data.output_size``).
        train_size: side of cached training images (``>= S``; default ``S``).
        shard_size: photos per shard file.
        num_workers: decoding processes (0: this process).
        splits: which splits to build.
        min_side, max_aspect, exclude_grayscale: which photos to exclude (see
            :func:`joint_colsr.data.decode.unusable_reason`).
        overwrite: delete a cache built with other settings instead of failing.
        progress: show a progress bar.
        max_shards: stop after writing this many shards in this call (the build resumes later).
        val_size: side of cached validation images (``>= S``; default ``S``: the evaluation
            protocol's images byte for byte). ``ceil(1.5 S)`` or more allows ``data.val_views > 1``
            (its 2/3-side crops are then at least ``S`` pixels: never enlarged).

    Returns:
        The index (also written to ``cache_dir/index.json``).
    """
    train_size = int(train_size or output_size)
    if train_size < output_size:
        raise ValueError(f"train_size ({train_size}) must be >= data.output_size ({output_size})")
    if val_size is not None and int(val_size) < output_size:
        raise ValueError(f"val_size ({val_size}) must be >= data.output_size ({output_size})")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"splits: unknown {unknown}; choose from {list(SPLITS)}")
    root = Path(cache_dir).expanduser().resolve()
    from joint_colsr.resume import lock_folder  # (import here: resume imports the config checks)

    with lock_folder(root, f"cache_dir={root} is being built by another process (pid {{pid}}); wait for it to end "
                           "(rerunning then resumes or checks it), or pick another cache_dir"):
        return _build_cache_locked(source, root, output_size, train_size, shard_size, num_workers, splits, min_side,
                                   max_aspect, exclude_grayscale, overwrite, progress, max_shards, val_size)


def _build_cache_locked(source: ImageSource, root: Path, output_size: int, train_size: int, shard_size: int,
                        num_workers: int, splits: Sequence[str], min_side: int, max_aspect: float,
                        exclude_grayscale: bool, overwrite: bool, progress: bool, max_shards: int | None,
                        val_size: int | None) -> dict[str, Any]:
    meta = _build_meta(source, output_size, train_size, shard_size, min_side, max_aspect, exclude_grayscale, val_size)
    index_path = root / INDEX_NAME
    index: dict[str, Any] = {**meta, "splits": {}}
    if index_path.exists():
        old = json.loads(index_path.read_text())
        old_meta = {k: old.get(k) for k in meta}
        if old_meta == meta:
            index = old
            log.info("cache %s: resuming", root)
        elif overwrite:
            log.warning("cache %s was built with other settings; overwrite=true: deleting it", root)
            for path in root.iterdir():
                if path.name == INDEX_NAME or path.suffix in (".npy", ".tmp"):
                    path.unlink()
        else:
            diff = {k: (old_meta[k], meta[k]) for k in meta if old_meta[k] != meta[k]}
            raise CacheError(
                f"cache_dir={root} holds a cache built with other settings {diff} (was, now); "
                "choose another cache_dir or pass overwrite=true"
            )
    train_items, val_items = source.split()
    prepare = {name: _Prepare(meta["sizes"][name], min_side, max_aspect, exclude_grayscale) for name in SPLITS}
    written = 0
    pool = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(num_workers) if num_workers > 0 else None
    try:
        for name, items in (("train", train_items), ("val", val_items)):
            if name not in splits:
                continue
            entry = index["splits"].setdefault(name, {"num_items": len(items), "shards": [], "complete": False})
            if entry["num_items"] != len(items):
                raise CacheError(
                    f"cache_dir={root}: the source now lists {len(items)} {name} photos, the cache was started with "
                    f"{entry['num_items']}; choose another cache_dir or pass overwrite=true"
                )
            intact = []
            for shard in entry["shards"]:  # resume after the longest intact prefix
                if not _shard_intact(root, shard):
                    break
                chunk = items[shard["first_item"] : shard["first_item"] + shard["num_items"]]
                if shard.get("items_sha1") != _keys_digest(chunk):
                    raise CacheError(
                        f"cache_dir={root}: shard {shard['file']} was built from other {name} photos than the source "
                        "lists now; choose another cache_dir or pass overwrite=true"
                    )
                intact.append(shard)
            if len(intact) < len(entry["shards"]):
                entry["shards"], entry["complete"] = intact, False
            start = len(entry["shards"]) * shard_size
            bar = tqdm(total=len(items), initial=start, desc=f"cache {name}", unit="img", disable=not progress)
            for first in range(start, len(items), shard_size):
                if max_shards is not None and written >= max_shards:
                    break
                chunk = items[first : first + shard_size]
                results = pool.imap(prepare[name], chunk, chunksize=4) if pool else map(prepare[name], chunk)
                arrays, keys, labels, excluded = [], [], [], {}
                for item, (arr, reason) in zip(chunk, results):
                    if arr is None:
                        excluded[item.path or item.key] = reason
                    else:
                        arrays.append(arr)
                        keys.append(item.key)
                        labels.append(list(item.labels))
                    bar.update(1)
                size = meta["sizes"][name]
                stacked = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.uint8)
                file_name = f"{name}-{first // shard_size:05d}.npy"
                with atomic_write(root / file_name, "wb") as f:
                    np.save(f, stacked)
                entry["shards"].append({
                    "file": file_name, "first_item": first, "num_items": len(chunk), "items_sha1": _keys_digest(chunk),
                    "count": len(arrays),
                    "bytes": (root / file_name).stat().st_size, "sha256": _sha256(root / file_name),
                    "keys": keys, "labels": labels, "excluded": excluded,
                })
                entry["complete"] = first + len(chunk) >= len(items)
                index["categories"] = {str(k): v for k, v in source.categories.items()}
                _write_index(index_path, index)
                written += 1
            bar.close()
            if not items:
                entry["complete"] = True
            _write_index(index_path, index)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return index


def _keys_digest(items: Sequence[ImageItem]) -> str:
    return hashlib.sha1("\n".join(item.key for item in items).encode("utf-8")).hexdigest()


def _shard_intact(root: Path, shard: dict[str, Any]) -> bool:
    path = root / shard["file"]
    return path.exists() and path.stat().st_size == shard["bytes"] and shard.get("count") is not None


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


class CacheSplit:
    """One split of an opened cache: ``len()`` images, ``image(i)`` -> ``(3, T, T)`` uint8.

    Shards are memory-mapped on first access in each process (DataLoader workers reopen
    them instead of receiving pickled maps).
    """

    def __init__(self, root: Path, name: str, shards: list[dict[str, Any]], size: int) -> None:
        self.root = root
        self.name = name
        self.size = size
        self.files = [s["file"] for s in shards]
        counts = [s["count"] for s in shards]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.keys = [k for s in shards for k in s["keys"]]
        self.labels = [tuple(lab) for s in shards for lab in s["labels"]]
        self.excluded = {p: r for s in shards for p, r in s["excluded"].items()}
        self._maps: list[np.ndarray | None] = [None] * len(self.files)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _map(self, shard: int) -> np.ndarray:
        arr = self._maps[shard]
        if arr is None:
            # A plain ndarray view of the map: np.memmap's Python-level __getitem__ costs more than the copy.
            arr = self._maps[shard] = np.asarray(np.load(self.root / self.files[shard], mmap_mode="r"))
        return arr

    def image(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self._map(shard)[i - self.offsets[shard]]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = [None] * len(self.files)
        return state


class ImageCache:
    """An opened, verified cache (see the module docstring).

    Use :meth:`open`; ``splits["train"]`` and ``splits["val"]`` are :class:`CacheSplit`.
    """

    def __init__(self, root: Path, index: dict[str, Any], splits: dict[str, CacheSplit]) -> None:
        self.root = root
        self.index = index
        self.splits = splits

    @property
    def output_size(self) -> int:
        return int(self.index["output_size"])

    @property
    def categories(self) -> dict[int, dict[str, str]]:
        return {int(k): v for k, v in self.index.get("categories", {}).items()}

    @classmethod
    def open(cls, cache_dir: str | os.PathLike, verify: str = "quick", splits: Sequence[str] = SPLITS) -> "ImageCache":
        """Open and verify a cache.

        Args:
            verify: ``"quick"`` (every shard present, .npy header and byte size as indexed),
                ``"full"`` (also each shard's sha256: reads every byte), or ``"none"``.
            splits: the splits that must be complete.

        Raises:
            CacheError: missing, incomplete, from another version, or damaged; the message
                says which file and how to rebuild.
        """
        if verify not in ("quick", "full", "none"):
            raise ValueError(f"data.cache_verify must be quick, full or none, got {verify!r}")
        root = Path(cache_dir).expanduser().resolve()
        index_path = root / INDEX_NAME
        if not index_path.is_file():
            raise CacheError(f"data.cache={cache_dir!r}: no {INDEX_NAME} in {root}; {BUILD_HELP}")
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as err:
            raise CacheError(f"data.cache={cache_dir!r}: {index_path} is not valid JSON ({err}); {BUILD_HELP}") from None
        if index.get("version") != CACHE_VERSION:
            raise CacheError(f"data.cache={cache_dir!r}: cache version {index.get('version')}, this code reads {CACHE_VERSION}; rebuild it")
        if index.get("colour") != COLOUR_HANDLING:
            log.warning("data.cache=%s was built before embedded colour profiles were converted to sRGB: photos tagged "
                        "Adobe RGB, Display P3 or CMYK profiles hold their stored values; rebuild it (preprocess ... "
                        "overwrite=true) for exact colours", cache_dir)
        opened = {}
        for name in splits:
            entry = index.get("splits", {}).get(name)
            if entry is None or not entry.get("complete"):
                done = sum(s["num_items"] for s in entry["shards"]) if entry else 0
                total = entry["num_items"] if entry else "?"
                raise CacheError(
                    f"data.cache={cache_dir!r}: split '{name}' is incomplete ({done} of {total} photos); "
                    "rerun the same preprocess command to resume it"
                )
            size = int(index["sizes"][name])
            for shard in entry["shards"] if verify != "none" else ():
                _verify_shard(root, shard, size, full=verify == "full")
            opened[name] = CacheSplit(root, name, entry["shards"], size)
        cache = cls(root, index, opened)
        for name, split in opened.items():
            reasons = count_reasons(split.excluded.values())
            log.info("cache %s: %s: %d images; excluded at build: %d (%s)", root, name, len(split),
                     len(split.excluded), ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "none")
        return cache

    def check_matches(self, source: ImageSource | None, output_size: int) -> None:
        """Fail unless this cache was built from ``source`` (same description) at ``output_size``.

        ``source=None`` (training from the cache alone, no ``data.root``) checks the size only.
        """
        if self.output_size != output_size:
            raise CacheError(f"data.cache={self.root} holds {self.output_size}x{self.output_size} images, "
                             f"data.output_size={output_size}; rebuild the cache or set data.output_size={self.output_size}")
        if source is None:
            return
        built, now = self.index["source"], source.describe()
        if built != now:
            raise CacheError(f"data.cache={self.root} was built from source {built}, the data config describes {now}; "
                             "use the same data config (e.g. data.categories, data.max_images) or rebuild the cache")

    def excluded_summary(self) -> dict[str, int]:
        """Reason -> number of photos excluded at build time, over all opened splits."""
        return {str(k): n for k, n in count_reasons(r for s in self.splits.values() for r in s.excluded.values()).items()}


def _verify_shard(root: Path, shard: dict[str, Any], size: int, full: bool) -> None:
    path = root / shard["file"]
    if not path.is_file():
        raise CacheError(f"cache {root}: shard {path.name} is missing; rerun the preprocess command to rebuild it")
    if path.stat().st_size != shard["bytes"]:
        raise CacheError(f"cache {root}: shard {path.name} has {path.stat().st_size} bytes, the index says {shard['bytes']}; "
                         "it is damaged: delete it and rerun the preprocess command")
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise CacheError(f"cache {root}: shard {path.name} is not a readable .npy file ({err})") from None
    if arr.dtype != np.uint8 or arr.shape != (shard["count"], 3, size, size):
        raise CacheError(f"cache {root}: shard {path.name} holds {arr.dtype} {arr.shape}, "
                         f"expected uint8 {(shard['count'], 3, size, size)}")
    if full and _sha256(path) != shard["sha256"]:
        raise CacheError(f"cache {root}: shard {path.name} fails its sha256 check; delete it and rerun the preprocess command")


class CachedImages(Dataset):
    """Reference images read from a cache split: the cached counterpart of
    :class:`joint_colsr.data.datasets.ReferenceImages` (same arguments, same sample dicts).

    Training: photo ``index % len(split)``; a random resized crop (``crop_scale``, no side
    under ``output_size`` cached pixels: never an enlarged crop) only when the cached side
    exceeds ``output_size`` and ``train_crop="random_resized"``, and a random horizontal flip;
    all drawn from the sample seed. Validation: photo ``index // len(views)`` through view
    ``index % len(views)``; the whole-photo view is the cached image itself, byte for byte.
    Views other than the whole photo need a validation split cached at 1.5x the output size
    or more (``preprocess val_size=``), so that they too are crops at their source resolution.
    """

    def __init__(
        self,
        split: CacheSplit,
        output_size: int,
        train: bool,
        length: int | None = None,
        views: Sequence[Box] = (VALIDATION_VIEWS[0],),
        crop_scale: tuple[float, float] = (0.25, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        label_columns: dict[int, int] | None = None,
        train_crop: str = "random_resized",
    ) -> None:
        if len(split) == 0:
            raise ValueError(f"cache split '{split.name}' holds no images")
        if train_crop not in TRAIN_CROPS:
            raise ValueError(f"data.train_crop must be one of {', '.join(TRAIN_CROPS)}, got {train_crop!r}")
        if not train and len(views) > 1 and split.size * 2 < 3 * int(output_size):
            raise ValueError(
                f"data.val_views={len(views)} from a cache whose validation images are {split.size}x{split.size}: its "
                f"crops would be enlarged to {output_size} (blurred targets). Use data.val_views=1, or rebuild the cache "
                f"with val_size={-(-3 * int(output_size) // 2)} (python -m joint_colsr.preprocess ... val_size=...)"
            )
        self.split = split
        self.output_size = int(output_size)
        self.train = train
        self.views = tuple(views)
        self.crop = train and split.size > self.output_size and train_crop == "random_resized"
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.hflip = hflip
        self.label_columns = label_columns
        default_length = len(split) if train else len(split) * len(self.views)
        self.length = int(length) if length else default_length

    def __len__(self) -> int:
        return self.length

    def _resized(self, chw: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        return resize_box(np.ascontiguousarray(chw.transpose(1, 2, 0)), box, self.output_size).transpose(2, 0, 1)

    def _plan(self, key: int | tuple[int, int]) -> tuple[int, int, tuple[float, float, float, float] | None, bool]:
        """``(index, photo, box or None (use the cached image as is), flip)`` for one sample key."""
        index, seed = (key if isinstance(key, tuple) else (key, sample_seed(0, 0, key)))
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        side = self.split.size
        if self.train:
            rng = np.random.default_rng(seed)
            if self.crop:
                box = random_resized_box(rng, side, side, self.crop_scale, self.crop_ratio, min_side=self.output_size)
            else:  # the whole photo, resized down when cached larger
                box = None if side == self.output_size else (0.0, 0.0, float(side), float(side))
            return index, index % len(self.split), box, bool(self.hflip and rng.random() < 0.5)
        photo, view = index // len(self.views), self.views[index % len(self.views)]
        whole = view == (0.0, 0.0, 1.0, 1.0) and side == self.output_size
        return index, photo, None if whole else (view[0] * side, view[1] * side, view[2] * side, view[3] * side), False

    def _fill(self, out: np.ndarray, photo: int, box: tuple[float, float, float, float] | None, flip: bool) -> None:
        """Write the ``(3, S, S)`` sample into ``out``: one copy out of the memory map."""
        chw = self.split.image(photo)
        if box is not None:
            chw = self._resized(chw, box)
        out[...] = chw[:, :, ::-1] if flip else chw

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, photo, box, flip = self._plan(key)
        rgb = np.empty((3, self.output_size, self.output_size), np.uint8)
        self._fill(rgb, photo, box, flip)
        sample = {"rgb": torch.from_numpy(rgb), "index": index, "skipped": 0}
        if self.label_columns is not None:
            sample["labels"] = multi_hot(self.split.labels[photo], self.label_columns)
        return sample

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> dict[str, torch.Tensor]:
        """A whole batch, already collated (the DataLoader's batched fetch): each image is
        copied once, from the memory map straight into the batch tensor, which a worker
        allocates in shared memory (what ``default_collate`` does) so it crosses to the
        main process without another copy. Same samples as ``__getitem__``, key by key."""
        plans = [self._plan(k) for k in keys]
        shape = (len(plans), 3, self.output_size, self.output_size)
        rgb = torch.empty(shape, dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            rgb.share_memory_()
        out = rgb.numpy()
        for i, (_, photo, box, flip) in enumerate(plans):
            self._fill(out[i], photo, box, flip)
        batch = {"rgb": rgb, "index": torch.tensor([p[0] for p in plans]), "skipped": torch.zeros(len(plans), dtype=torch.long)}
        if self.label_columns is not None:
            batch["labels"] = torch.stack([multi_hot(self.split.labels[p[1]], self.label_columns) for p in plans])
        return batch


def collate_samples(data: list[dict] | dict) -> dict:
    """``default_collate``, except for a batch a dataset's ``__getitems__`` already collated."""
    if isinstance(data, dict):
        return data
    return default_collate(data)


def summarize(index: dict[str, Any]) -> str:
    """One line per split: images kept, excluded with reasons, shards."""
    lines = []
    for name, entry in index.get("splits", {}).items():
        kept = sum(s["count"] for s in entry["shards"])
        excluded = count_reasons(r for s in entry["shards"] for r in s["excluded"].values())
        done = sum(s["num_items"] for s in entry["shards"])
        state = "complete" if entry["complete"] else f"incomplete ({done} of {entry['num_items']} photos processed)"
        reasons = ", ".join(f"{n} {r}" for r, n in excluded.most_common()) or "none"
        lines.append(f"{name}: {kept} images in {len(entry['shards'])} shards, {state}; "
                     f"skipped {sum(excluded.values())} files ({reasons})")
    return "\n".join(lines)

