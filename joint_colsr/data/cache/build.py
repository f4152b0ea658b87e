"""Building a cache of decoded reference images (``python -m joint_colsr.preprocess``).

See :mod:`joint_colsr.data.cache.store` for the layout. Building is resumable: shards are
written to a temporary name, fsynced and renamed, and the index is rewritten (atomically)
after each shard, so an interrupted build continues at the first missing shard. Photos
that cannot be used (unreadable, grayscale, tiny, extreme aspect ratio) are excluded at
build time and counted in the index.
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
from tqdm.auto import tqdm

from joint_colsr.data.cache.store import CACHE_VERSION, COLOUR_HANDLING, INDEX_NAME, SPLITS, CacheError, sha256_of
from joint_colsr.data.decode import ImageDecodeError, unusable_reason
from joint_colsr.data.sources import ImageItem, ImageSource
from joint_colsr.data.views import resize_box
from joint_colsr.outputs import atomic_write

log = logging.getLogger(__name__)


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
                    "bytes": (root / file_name).stat().st_size, "sha256": sha256_of(root / file_name),
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
