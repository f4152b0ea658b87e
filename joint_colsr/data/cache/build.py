"""Building a cache of decoded reference images (``python -m joint_colsr.preprocess``).

See :mod:`joint_colsr.data.cache.store` for the layout. One stream of work covers every
photo still to do, of both splits: the decoding pool never waits at a shard boundary.
The main thread only copies decoded images into the shard being filled; a writer thread
writes each finished shard (hashing it while writing), fsyncs it, renames it into place
and appends its line to ``shards.jsonl`` (fsynced), so disk writes overlap decoding and
the index grows by one line per shard instead of being rewritten.

Building is resumable: an interrupted build continues, per split, after the longest
prefix of shards whose lines and files are intact (a torn last line, a missing or
damaged shard and everything after it are redone). Photos that cannot be used
(unreadable, grayscale, tiny, extreme aspect ratio) are excluded at build time and listed
in their shard's line; files the source skipped at start-up are listed in ``index.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from joint_colsr.data.cache.store import (
    CACHE_VERSION,
    COLOUR_HANDLING,
    INDEX_NAME,
    SHARDS_NAME,
    SPLITS,
    VERIFIED_NAME,
    CacheError,
    read_index,
    read_shard_lines,
)
from joint_colsr.data.decode import ImageDecodeError, unusable_reason
from joint_colsr.data.sources import ImageItem, ImageSource
from joint_colsr.data.views import VALIDATION_VIEWS, WHOLE, Box, resize_box, view_box
from joint_colsr.run.outputs import atomic_write

log = logging.getLogger(__name__)

#: Photos handed to a pool worker at a time: large enough that task hand-off costs little.
CHUNKSIZE = 8


@dataclass(frozen=True)
class _Prepare:
    """Picklable per-photo work for the build pool: decode, filter, then each stored view
    of the photo resized to its split's side, CHW. ``sizes`` and ``views`` are per split."""

    sizes: dict[str, int]
    views: dict[str, tuple[Box, ...]]
    min_side: int
    max_aspect: float
    exclude_grayscale: bool

    def __call__(self, task: tuple[str, ImageItem]) -> tuple[np.ndarray | None, str | None, float]:
        """``(views (V, 3, T, T) uint8 or None, reason or None, seconds of work)``."""
        start = time.perf_counter()
        split, item = task
        try:
            rgb = item.load()
        except ImageDecodeError as err:
            return None, err.reason, time.perf_counter() - start
        reason = unusable_reason(rgb, self.min_side, self.max_aspect, self.exclude_grayscale)
        if reason is not None:
            return None, reason, time.perf_counter() - start
        height, width = rgb.shape[:2]
        # Exactly what ReferenceImages does for validation view k: the view's box of the
        # original photo, resized once (view 0: the whole photo, the evaluation protocol).
        out = np.stack([resize_box(rgb, view_box(view, width, height), self.sizes[split]).transpose(2, 0, 1)
                        for view in self.views[split]])
        return out, None, time.perf_counter() - start


def build_meta(source: ImageSource, output_size: int, train_size: int, shard_size: int, min_side: int,
               max_aspect: float, exclude_grayscale: bool, val_views: int = 1) -> dict[str, Any]:
    """What a cache is built with: a resumed build must match it exactly."""
    return {
        "version": CACHE_VERSION,
        "source": source.describe(),
        "output_size": int(output_size),
        "sizes": {"train": int(train_size), "val": int(output_size)},
        "val_views": [list(box) for box in VALIDATION_VIEWS[:val_views]],
        "layout": "NCHW uint8 sRGB; train: whole photo squash-resized; val: its validation views (antialiased bicubic)",
        "colour": COLOUR_HANDLING,
        "filters": {"min_side": int(min_side), "max_aspect": float(max_aspect), "exclude_grayscale": bool(exclude_grayscale)},
        "shard_size": int(shard_size),
    }


def write_index(root: Path, head: dict[str, Any], shards: Sequence[dict[str, Any]] = ()) -> None:
    """Write ``index.json`` (``head``: meta, ``splits`` ``{name: {"num_items"}}``, ...) and
    ``shards.jsonl`` (one line per entry of ``shards``, each naming its ``split``), both
    atomically. Builders of synthetic caches use it too, so every cache has one format."""
    with atomic_write(root / INDEX_NAME) as f:
        json.dump(head, f)
    with atomic_write(root / SHARDS_NAME) as f:
        f.writelines(_shard_line(entry) for entry in shards)


def _shard_line(entry: dict[str, Any]) -> str:
    return json.dumps(entry, separators=(",", ":")) + "\n"


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
    val_views: int = 1,
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
        val_views: validation views stored per photo (the first ``val_views`` of
            :data:`~joint_colsr.data.views.VALIDATION_VIEWS`, each at ``S``, byte for byte
            what the file path makes); ``data.val_views`` may then be up to this.

    Returns:
        The index (:func:`joint_colsr.data.cache.store.read_index`).
    """
    train_size = int(train_size or output_size)
    if train_size < output_size:
        raise ValueError(f"train_size ({train_size}) must be >= data.output_size ({output_size})")
    if not 1 <= int(val_views) <= len(VALIDATION_VIEWS):
        raise ValueError(f"val_views must be in [1, {len(VALIDATION_VIEWS)}], got {val_views}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"splits: unknown {unknown}; choose from {list(SPLITS)}")
    root = Path(cache_dir).expanduser().resolve()
    from joint_colsr.run.resume import lock_folder  # (import here: resume imports the config checks)

    meta = build_meta(source, output_size, train_size, shard_size, min_side, max_aspect, exclude_grayscale, int(val_views))
    with lock_folder(root, f"cache_dir={root} is being built by another process (pid {{pid}}); wait for it to end "
                           "(rerunning then resumes or checks it), or pick another cache_dir"):
        _build_locked(source, root, meta, splits, num_workers, overwrite, progress, max_shards)
    return read_index(root)


def _remove_cache_files(root: Path) -> None:
    for path in root.iterdir():
        if path.name in (INDEX_NAME, SHARDS_NAME, VERIFIED_NAME) or path.suffix in (".npy", ".tmp"):
            path.unlink()


def _build_locked(source: ImageSource, root: Path, meta: dict[str, Any], splits: Sequence[str], num_workers: int,
                  overwrite: bool, progress: bool, max_shards: int | None) -> None:
    index_path = root / INDEX_NAME
    old: dict[str, Any] | None = None
    if index_path.exists():
        try:
            old = json.loads(index_path.read_text())
        except json.JSONDecodeError:
            if not overwrite:
                raise CacheError(f"cache_dir={root}: {INDEX_NAME} is not valid JSON; pass overwrite=true to rebuild "
                                 "the cache, or choose another cache_dir") from None
            old = {}
        old_meta = {k: old.get(k) for k in meta}
        if old_meta == meta:
            log.info("cache %s: resuming", root)
        elif overwrite:
            log.warning("cache %s was built with other settings; overwrite=true: deleting it", root)
            _remove_cache_files(root)
            old = None
        elif old.get("version") != CACHE_VERSION:
            raise CacheError(f"cache_dir={root} holds a cache of format version {old.get('version')} (an older "
                             f"joint_colsr); this code writes version {CACHE_VERSION}: rerun with overwrite=true to rebuild it")
        else:
            diff = {k: (old_meta[k], meta[k]) for k in meta if old_meta[k] != meta[k]}
            raise CacheError(f"cache_dir={root} holds a cache built with other settings {diff} (was, now); "
                             "choose another cache_dir or pass overwrite=true")
    # Temporary files of writes a kill cut short (we hold the folder's lock: nobody else writes).
    for path in root.glob("*.tmp"):
        path.unlink()

    items = dict(zip(SPLITS, source.split()))
    head = {**meta, "splits": {name: {"num_items": len(items[name])} for name in SPLITS},
            "categories": {str(k): v for k, v in source.categories.items()},
            "skipped_at_start": dict(source.skip_report.skipped)}
    lines, intact, _ = read_shard_lines(root / SHARDS_NAME)  # a torn or damaged line and all after it: redone
    kept = _resumable_shards(root, items, old, lines, meta["shard_size"]) if old is not None else []
    whole = (root / SHARDS_NAME).stat().st_size if (root / SHARDS_NAME).exists() else -1
    if head != old or lines != kept or intact != whole:
        write_index(root, head, kept)  # once per build call (a torn line dropped); shard lines are appended from here on
    done = {name: sum(1 for e in kept if e["split"] == name) * meta["shard_size"] for name in SPLITS}
    todo = [(name, first) for name in SPLITS if name in splits
            for first in range(done[name], len(items[name]), meta["shard_size"])]
    if max_shards is not None:
        todo = todo[:max_shards]
    if todo:
        _stream(root, meta, items, todo, num_workers, progress)


def _resumable_shards(root: Path, items: dict[str, list[ImageItem]], old: dict[str, Any],
                      entries: list[dict[str, Any]], shard_size: int) -> list[dict[str, Any]]:
    """The shard lines a resumed build keeps: per split, the longest prefix (in item order)
    of lines whose files are intact; refuses a source that lists other photos now."""
    for name in SPLITS:
        was = old.get("splits", {}).get(name, {}).get("num_items")
        if was is not None and was != len(items[name]):
            raise CacheError(f"cache_dir={root}: the source now lists {len(items[name])} {name} photos, the cache was "
                             f"started with {was}; choose another cache_dir or pass overwrite=true")
    kept = []
    for name in SPLITS:
        for number, entry in enumerate(sorted((e for e in entries if e.get("split") == name), key=lambda e: e["first_item"])):
            if entry["first_item"] != number * shard_size or not _shard_intact(root, entry):
                break
            chunk = items[name][entry["first_item"] : entry["first_item"] + entry["num_items"]]
            if entry.get("items_sha1") != _keys_digest(chunk):
                raise CacheError(f"cache_dir={root}: shard {entry['file']} was built from other {name} photos than the "
                                 "source lists now; choose another cache_dir or pass overwrite=true")
            kept.append(entry)
    return kept


@dataclass
class _Shard:
    """A shard being filled: its photos' images land in ``images`` as they are decoded."""

    split: str
    first: int
    chunk: list[ImageItem]
    images: np.ndarray  # (len(chunk) * views, 3, T, T), the first count * views rows filled
    views: int
    count: int = 0
    keys: list[str] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)

    def add(self, item: ImageItem, views: np.ndarray | None, reason: str | None) -> None:
        if views is None:
            self.excluded[item.path or item.key] = reason or "unusable"
        else:
            self.images[self.count * self.views : (self.count + 1) * self.views] = views
            self.count += 1
            self.keys.append(item.key)
            self.labels.append(list(item.labels))


def _stream(root: Path, meta: dict[str, Any], items: dict[str, list[ImageItem]],
            todo: list[tuple[str, int]], num_workers: int, progress: bool) -> None:
    """Decode the photos of the shards ``todo`` ((split, first item) in order) as one stream
    and hand each finished shard to the writer thread."""
    shard_size = meta["shard_size"]
    views = {"train": (WHOLE,), "val": tuple(tuple(b) for b in meta["val_views"])}
    prepare = _Prepare(meta["sizes"], views, meta["filters"]["min_side"], meta["filters"]["max_aspect"],
                       meta["filters"]["exclude_grayscale"])
    chunks = [(name, first, items[name][first : first + shard_size]) for name, first in todo]
    # Photos handed to the pool but not yet taken by this thread: bounds the decoded images
    # waiting in memory when the disk is slower than decoding.
    in_flight = threading.BoundedSemaphore(max(256, 4 * CHUNKSIZE * max(num_workers, 1)))
    stop = threading.Event()

    def tasks() -> Iterator[tuple[str, ImageItem]]:  # runs in the pool's task-feeding thread
        for name, _, chunk in chunks:
            for item in chunk:
                while not in_flight.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                yield name, item

    pool = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(num_workers) if num_workers > 0 else None
    writer = _ShardWriter(root)
    bar = tqdm(total=sum(len(c) for _, _, c in chunks), desc="cache", unit="img", disable=not progress)
    busy = 0.0
    start = time.perf_counter()
    try:
        results = pool.imap(prepare, tasks(), chunksize=CHUNKSIZE) if pool else map(prepare, tasks())
        for name, first, chunk in chunks:
            side, count = meta["sizes"][name], len(views[name])
            shard = _Shard(name, first, chunk, np.empty((len(chunk) * count, 3, side, side), np.uint8), count)
            for item in chunk:
                arr, reason, seconds = next(results)
                in_flight.release()
                shard.add(item, arr, reason)
                busy += seconds
                bar.update(1)
            writer.submit(shard, first // shard_size)
        writer.close()
    except BaseException:
        stop.set()
        if pool is not None:
            pool.terminate()
        writer.abandon()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    wall = time.perf_counter() - start
    photos = sum(len(c) for _, _, c in chunks)
    log.info("cache %s: %d photos in %.1f s (%.0f/s); decoding busy %.0f%% of %d worker(s)", root, photos, wall,
             photos / max(wall, 1e-9), 100 * busy / max(wall * max(num_workers, 1), 1e-9), max(num_workers, 1))


class _ShardWriter:
    """A thread that writes finished shards in order: each ``.npy`` hashed while written,
    fsynced and renamed into place, then its line appended to ``shards.jsonl`` and fsynced.
    An error in the thread is raised in the caller at its next :meth:`submit` or :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs: queue.Queue[tuple[_Shard, int] | None] = queue.Queue(maxsize=1)  # one waiting, one being written
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cache-shard-writer", daemon=True)
        self.thread.start()

    def submit(self, shard: _Shard, number: int) -> None:
        while True:
            self._raise()
            try:
                self.jobs.put((shard, number), timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        while self.thread.is_alive():
            self._raise()
            try:
                self.jobs.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self.thread.join()
        self._raise()

    def abandon(self) -> None:
        """Stop after the shard being written (an interruption: what is written stays valid)."""
        while True:
            try:
                self.jobs.get_nowait()
            except queue.Empty:
                break
        if self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            with open(self.root / SHARDS_NAME, "a") as lines:
                while (job := self.jobs.get()) is not None:
                    self._write(lines, *job)
        except BaseException as err:  # handed to the building thread
            self.error = err

    def _write(self, lines: IO[str], shard: _Shard, number: int) -> None:
        file_name = f"{shard.split}-{number:05d}.npy"
        images = shard.images[: shard.count * shard.views]
        with atomic_write(self.root / file_name, "wb") as f:
            digest = _write_npy(f, images)
        entry = {
            "split": shard.split, "file": file_name, "first_item": shard.first, "num_items": len(shard.chunk),
            "items_sha1": _keys_digest(shard.chunk), "count": shard.count,
            "bytes": (self.root / file_name).stat().st_size, "sha256": digest,
            "keys": shard.keys, "labels": shard.labels, "excluded": shard.excluded,
        }
        lines.write(_shard_line(entry))
        lines.flush()
        os.fsync(lines.fileno())


def _write_npy(f: IO[bytes], array: np.ndarray) -> str:
    """Write ``array`` as ``np.save`` does (same bytes) and return the file's sha256,
    computed on the bytes as they are written (no second read)."""
    digest = hashlib.sha256()
    header = _npy_header(array)
    digest.update(header)
    f.write(header)
    data = memoryview(np.ascontiguousarray(array).reshape(-1))  # uint8: one byte per element
    for start in range(0, len(data), 1 << 24):  # hashlib and write release the GIL on large blocks
        block = data[start : start + (1 << 24)]
        digest.update(block)
        f.write(block)
    return digest.hexdigest()


def _npy_header(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(array))
    return buffer.getvalue()


def _keys_digest(items: Sequence[ImageItem]) -> str:
    return hashlib.sha1("\n".join(item.key for item in items).encode("utf-8")).hexdigest()


def _shard_intact(root: Path, shard: dict[str, Any]) -> bool:
    path = root / shard["file"]
    return path.exists() and path.stat().st_size == shard["bytes"] and shard.get("count") is not None
