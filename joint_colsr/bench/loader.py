"""The cache path's training loader at COCO scale, next to this machine's memcpy bandwidth.

    python -m joint_colsr.bench.loader              # writes benchmarks/results.json and RESULTS.md
    python -m joint_colsr.bench.loader --quick      # seconds; a smoke test

1. **A COCO-size synthetic decoded cache** (:func:`make_synthetic_cache`): 118,287 training
   images of 256x256 uint8 (196 KB each, 23 GB as indexed) in shards of 1024, of which only
   ``real_shards`` are real files (random crops of the embedded photos); every other shard is
   a hard link to one of them, so the disk holds ~0.5 GB. The index is the real builder's
   (``build_cache`` of the embedded photos), its training split replaced.
2. **The real training loader**: ``ColSRDataModule(data.cache=...).train_dataloader()``,
   iterated as Lightning does (the previous batch still held while the next is fetched),
   batch 160, at steady state (the first batches skipped): images delivered per second
   (``loader_cache_images_per_s``) and the training process's main-thread CPU seconds per
   image. The crops and flips that ``on_after_batch_transfer`` runs on the device are
   timed apart on this CPU (``cpu_augment_images_per_s``), as is LAB in the data benchmark.
3. **The roof**: memcpy of a batch of 196 KB images between two buffers in the same run
   (``memcpy_images_per_s``: with the loader's two gathering threads, from a 512 MB source,
   so from memory as the loader's copies are), measured in 6 separate runs, half before
   the loader and half after; ``loader_vs_memcpy`` = delivered / the median roof, with the
   ratio against the highest and the lowest roof run beside it (the roof's own noise). The headline uses the
   default two gathering threads (``data.cache_gather_threads=2``); a run with one is reported next to it.

4. **With a GPU**: the same loader with its ring in pinned memory and each batch copied to
   the GPU as Lightning does (``non_blocking`` from pinned memory, the ring slot released
   by the copy's event, a ``synchronize`` before the timed window closes):
   ``loader_cache.with_host_to_device``; ``null`` without CUDA (nothing is simulated).
5. **Cold and warm apart** (``loader_cache.cold``): a second synthetic cache whose shards
   are all distinct files (no hard links: every image is read from its own pages), opened
   fresh (no memory map of it exists), its shards dropped from the page cache
   (``posix_fadvise(DONTNEED)`` after an ``fsync``), then one epoch timed (cold), then a
   second epoch of the same loader (warm). ``DONTNEED`` is advice the kernel may ignore
   (pages mapped elsewhere, tmpfs): the share of the shards' pages still resident after it
   is measured (Linux ``mincore``) and reported beside the cold rate.

The hard links of step 1 mean the page cache holds all the data after the first touches:
the headline loader reads warm pages, as on a machine whose RAM holds the cache (COCO at
256: 23 GB). The sequential read from disk is measured apart too
(``cold_read_images_per_s``: a real shard read after ``DONTNEED``), a bound for a cache
larger than RAM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from joint_colsr.bench import merge_results, replace_report_section
from joint_colsr.data import ColSRDataModule, SamplePhotos, build_cache
from joint_colsr.data.cache.build import write_index
from joint_colsr.data.cache.store import INDEX_NAME, read_index, sha256_of
from joint_colsr.data.geometry import augment, crop_resize
from joint_colsr.data.sampler import sample_keys, sample_uniforms
from joint_colsr.data.views import (
    BOX_DRAWS,
    random_resized_boxes,
    resize_box,
    squash_resize,
    whole_pixel_boxes,
)

log = logging.getLogger(__name__)

COCO_TRAIN_IMAGES = 118_287
TARGET_IMAGES_PER_S = 10_000
#: The loader's gathering threads (data.cache_gather_threads' default); the memcpy roof copies with as many.
GATHER_THREADS = 2
#: Separate memcpy roof measurements (the median is the roof; their spread is reported).
ROOF_RUNS = 6
#: Shards of the cold run's cache (all distinct files: 2 x 1024 images, 400 MB, in a full run).
COLD_SHARDS = 2
REPORT_BEGIN = "<!-- BEGIN loader benchmark (python -m joint_colsr.bench.loader) -->"
REPORT_END = "<!-- END loader benchmark -->"


def _real_images(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(count, 3, size, size)`` uint8: random crops of the embedded photos, squash-resized."""
    photos = [item.array for item in SamplePhotos().items()]
    out = np.empty((count, 3, size, size), np.uint8)
    for i in range(count):
        rgb = photos[i % len(photos)]
        height, width = rgb.shape[:2]
        w, h = width * rng.uniform(0.4, 1.0), height * rng.uniform(0.4, 1.0)
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        img = Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC, box=(x0, y0, x0 + w, y0 + h))
        out[i] = np.asarray(img).transpose(2, 0, 1)
    return out


def make_synthetic_cache(root: str | os.PathLike, num_images: int = COCO_TRAIN_IMAGES, size: int = 256,
                         shard_size: int = 1024, real_shards: int = 2, seed: int = 0) -> Path:
    """A decoded-image cache of ``num_images`` training images at ``size`` that
    ``ColSRDataModule(data.cache=root)`` opens like any other (see the module docstring).

    Only ``real_shards`` full shards (and the last, partial one) hold their own bytes; the
    others are hard links to them. Validation is the embedded photos' real validation split.
    """
    root = Path(root)
    if num_images < 1 or shard_size < 1 or real_shards < 1:
        raise ValueError(f"num_images, shard_size and real_shards must be >= 1, got {num_images}, {shard_size}, {real_shards}")
    build_cache(SamplePhotos(), root, output_size=size, shard_size=shard_size, progress=False)
    head = json.loads((root / INDEX_NAME).read_text())  # the meta; the shard lines are rewritten below
    built = read_index(root)["splits"]
    template = dict(built["train"]["shards"][0])  # the builder's entry format, fields replaced below
    for shard in built["train"]["shards"]:
        (root / shard["file"]).unlink()
    rng = np.random.default_rng(seed)
    num_shards = math.ceil(num_images / shard_size)
    real: list[tuple[str, int, str]] = []  # (file, bytes, sha256) of each real full shard
    shards = []
    for k in range(num_shards):
        count = min(shard_size, num_images - k * shard_size)
        name = f"train-{k:05d}.npy"
        if count < shard_size or len(real) < real_shards:  # a file of its own
            np.save(root / name, _real_images(count, size, rng))
            size_bytes, digest = (root / name).stat().st_size, sha256_of(root / name)
            if count == shard_size:
                real.append((name, size_bytes, digest))
        else:  # a hard link to a real shard
            linked, size_bytes, digest = real[k % len(real)]
            os.link(root / linked, root / name)
        keys = [f"synthetic/{k * shard_size + i:06d}.jpg" for i in range(count)]
        shards.append({**template, "file": name, "first_item": k * shard_size, "num_items": count, "count": count,
                       "items_sha1": f"synthetic-{k}", "bytes": size_bytes, "sha256": digest, "keys": keys,
                       "labels": [[] for _ in range(count)], "excluded": {}})
    head["splits"]["train"]["num_items"] = num_images
    head["sizes"]["train"] = size
    write_index(root, head, shards + built["val"]["shards"])
    return root


def memcpy_images_per_s(image_bytes: int, batch_size: int, seconds: float, source_bytes: int = 512 << 20,
                        threads: int = 1) -> float:
    """Images per second a memcpy moves into a ``batch_size``-image buffer from a
    ``source_bytes`` buffer read in turn (larger than any CPU cache: a copy from memory, as
    the loader's is), ``threads`` threads each copying its share of every batch (numpy
    releases the GIL), as the loader's gathering threads do. Best block of 5 batch copies."""
    per_source = max(batch_size, source_bytes // image_bytes) // batch_size * batch_size
    src = np.random.default_rng(0).integers(0, 256, (per_source, image_bytes), dtype=np.uint8)
    dst = np.empty((batch_size, image_bytes), np.uint8)
    blocks = per_source // batch_size
    # Each thread's share of a batch, as (first, end) image slots: fixed before the timing.
    edges = np.linspace(0, batch_size, max(1, threads) + 1).astype(int)
    shares = list(zip(edges[:-1], edges[1:]))
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None

    def copy_batch(k: int) -> None:
        base = (k % blocks) * batch_size
        if pool is None:
            np.copyto(dst, src[base:base + batch_size])
        else:
            list(pool.map(lambda share: np.copyto(dst[share[0]:share[1]], src[base + share[0]:base + share[1]]), shares))

    best, start, k = math.inf, time.perf_counter(), 0
    try:
        while time.perf_counter() - start < seconds or k < 10:
            t = time.perf_counter()
            for _ in range(5):
                copy_batch(k)
                k += 1
            best = min(best, (time.perf_counter() - t) / 5)
    finally:
        if pool is not None:
            pool.shutdown()
    return batch_size / best


def memcpy_roof(image_bytes: int, batch_size: int, seconds: float, threads: int, runs: int) -> list[float]:
    """``runs`` separate :func:`memcpy_images_per_s` measurements of ``seconds / runs`` each."""
    return [memcpy_images_per_s(image_bytes, batch_size, seconds / runs, threads=threads) for _ in range(runs)]


def ratio_with_spread(rate: float, roofs: list[float]) -> dict[str, float]:
    """``rate`` over the median roof, and over the highest and lowest roof measured (the spread
    the roof's own noise gives the ratio)."""
    median = float(np.median(roofs))
    return {"ratio": round(rate / median, 3), "low": round(rate / max(roofs), 3), "high": round(rate / min(roofs), 3),
            "roof_median": round(median, 1), "roof_spread": round(max(roofs) / min(roofs), 3)}


def drop_from_page_cache(paths: list[Path]) -> bool:
    """Ask the kernel to drop ``paths``' pages from the page cache (``fsync``, then
    ``posix_fadvise(DONTNEED)``: advice; pages a process has mapped stay). ``False`` where
    ``posix_fadvise`` is missing (nothing asked)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages (a file just written) are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def resident_share(paths: list[Path]) -> float | None:
    """The share of ``paths``' pages in the page cache (Linux ``mincore`` on a private map,
    which faults nothing in); ``None`` where ``mincore`` cannot be called."""
    import ctypes
    import mmap

    try:
        mincore = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):
        return None
    resident = total = 0
    for path in paths:
        size = path.stat().st_size
        if size == 0:
            continue
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        try:
            start = ctypes.c_char.from_buffer(mapped)
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            rc = mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size), vec)
            del start  # the map cannot close while a ctypes view of it exists
            if rc != 0:
                return None
            resident += int((np.frombuffer(vec, np.uint8) & 1).sum())
            total += pages
        finally:
            mapped.close()
    return resident / total if total else None


def cold_read_images_per_s(path: Path, image_bytes: int) -> float | None:
    """Images per second read from disk: ``path`` dropped from the page cache, then read
    sequentially (None where ``posix_fadvise`` is missing). Call it before ``path`` is
    memory-mapped: mapped pages stay in the page cache."""
    if not drop_from_page_cache([path]):
        return None
    buf = bytearray(1 << 22)
    total, start = 0, time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total / image_bytes / (time.perf_counter() - start)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch``'s tensors copied to ``device`` as Lightning moves a batch (``non_blocking``),
    the ring slot then told the copy is queued (``RingSlot.transferred``, as
    ``on_after_batch_transfer`` does): its gathering thread waits for the copy before reuse."""
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if "slot" in batch:
        batch["slot"].transferred()
    return moved


def _loader_for(dm: ColSRDataModule, device: torch.device | None) -> Any:
    """``dm``'s training loader; with a CUDA ``device``, its ring in pinned memory (the ring is
    allocated on the first batch, so setting ``pin_memory`` on a fresh loader is enough; a
    data module without a trainer does not pin, as it cannot know a GPU trains)."""
    loader = dm.train_dataloader()
    if device is not None:
        loader.pin_memory = True
    return loader


def measure_loader(dm: ColSRDataModule, seconds: float, warmup_batches: int = 3,
                   device: torch.device | None = None) -> dict[str, float]:
    """Iterate ``dm.train_dataloader()`` as Lightning does (one batch held while the next is
    fetched), epoch after epoch; images/s and main-thread CPU seconds per image after warm-up.
    With a CUDA ``device``: pinned ring, each batch copied to it (:func:`_to_device`), and the
    device synchronized when the timed window opens and before it closes."""
    loader = _loader_for(dm, device)
    held = None
    images, batches, epoch = 0, 0, 0
    start = wall = cpu = None
    while True:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            held = batch if device is None else _to_device(batch, device)  # noqa: F841 (held like Lightning's prefetched batch)
            batches += 1
            if batches == warmup_batches:
                if device is not None:
                    torch.cuda.synchronize(device)
                start, cpu = time.perf_counter(), time.thread_time()
            elif start is not None:
                images += len(batch["index"])
                wall = time.perf_counter() - start
                if wall >= seconds:
                    if device is not None:  # the copies queued in the window are done
                        torch.cuda.synchronize(device)
                        wall = time.perf_counter() - start
                    return {"images_per_s": images / wall, "main_thread_s_per_image": (time.thread_time() - cpu) / images,
                            "images": images, "seconds": wall, "epochs_started": epoch + 1}
        epoch += 1


def _epoch_images_per_s(loader: Any, epoch: int) -> tuple[float, int]:
    """Images/s of one whole epoch of ``loader`` (from the request of its first batch to the
    arrival of its last), and the images delivered."""
    loader.sampler.set_epoch(epoch)
    held: list[dict[str, Any]] = []  # the batch held while the next is fetched, as Lightning does
    images, start = 0, time.perf_counter()
    for batch in loader:
        held[:] = [batch]
        images += len(batch["index"])
    return images / (time.perf_counter() - start), images


def measure_cold_and_warm(root: Path, size: int, batch_size: int, gather_threads: int) -> dict[str, Any]:
    """One epoch of a fresh loader over the cache at ``root`` after its training shards were
    dropped from the page cache (cold), then a second epoch of it (warm); see the module
    docstring. The cache's shards should be distinct files, each image read once an epoch."""
    dm = ColSRDataModule(None, cache=str(root), batch_size=batch_size, num_workers=0, input_size=min(96, size),
                         output_size=size, seed=0, pin_memory=False, cache_gather_threads=gather_threads)
    dm.setup("fit")  # maps the shards on their first batch, not here (the quick check unmaps its own)
    split = dm.image_cache.splits["train"]
    shards = [root / f for f in split.files]
    if len({os.stat(p).st_ino for p in shards}) != len(shards):
        raise ValueError(f"cold run: the cache at {root} has hard-linked shards; its images would not all be cold")
    asked = drop_from_page_cache(shards)
    resident = resident_share(shards)
    loader = dm.train_dataloader()
    cold, images = _epoch_images_per_s(loader, 0)
    after_cold = resident_share(shards)
    warm, _ = _epoch_images_per_s(loader, 1)
    return {"cold_images_per_s": round(cold, 1), "warm_images_per_s": round(warm, 1), "images_per_epoch": images,
            "distinct_images": len(split), "dontneed_asked": asked,
            "resident_share_after_dontneed": None if resident is None else round(resident, 4),
            "resident_share_after_cold_epoch": None if after_cold is None else round(after_cold, 4)}


def cpu_augment_images_per_s(dm: ColSRDataModule, seconds: float) -> float:
    """Images/s of the device-side crops and flips (``geometry.augment``) run on this CPU."""
    batch = next(iter(dm.train_dataloader()))
    rgb, flip, boxes = batch["rgb"].clone(), batch.get("flip"), batch.get("boxes")
    flip, boxes = (None if t is None else t.clone() for t in (flip, boxes))  # out of the loader's ring
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        augment(rgb, dm.output_size, flip, boxes)
        images += len(rgb)
    return images / (time.perf_counter() - start)


def device_crops_vs_pil(samples: int = 200, cached: int = 384, size: int = 256) -> dict[str, dict[str, float]]:
    """How far the cache path's crops (whole-pixel boxes, :func:`crop_resize`) are from PIL's
    ``resize_box``: on the embedded photos squash-resized to ``cached`` (a ``train_size=384``
    cache), with boxes drawn as training draws them (``crop_scale`` 0.25-1, never under
    ``size`` pixels a side). Against PIL on the same fractional box (the file path's way: a
    sub-pixel shift of up to half a pixel) and on the rounded box (the two kernels alone).
    Uint8 levels; a deterministic result (no timing)."""
    photos = [squash_resize(item.array, cached) for item in SamplePhotos().items()]
    boxes = random_resized_boxes(sample_uniforms(sample_keys(0, 0, np.arange(samples)), BOX_DRAWS), cached, cached,
                                 (0.25, 1.0), (3 / 4, 4 / 3), min_side=size)
    whole = whole_pixel_boxes(boxes, cached, cached)
    diffs: dict[str, list[np.ndarray]] = {"fractional_box": [], "rounded_box": []}
    for i in range(samples):
        photo = photos[i % len(photos)]
        ours = crop_resize(torch.from_numpy(photo.transpose(2, 0, 1).copy())[None], whole[i:i + 1], size)[0]
        ours = ours.numpy().transpose(1, 2, 0).astype(np.float64)
        diffs["fractional_box"].append(np.abs(ours - resize_box(photo, tuple(boxes[i]), size)))
        diffs["rounded_box"].append(np.abs(ours - resize_box(photo, tuple(float(v) for v in whole[i]), size)))
    out = {}
    for name, parts in diffs.items():
        d = np.stack(parts)
        out[name] = {"mean_abs": round(float(d.mean()), 3), "max_abs": float(d.max()),
                     "psnr_db": round(float(10 * np.log10(255**2 / (d**2).mean())), 2), "share_2_levels_or_more": round(float((d >= 2).mean()), 4)}
    return out


def run_loader_benchmark(quick: bool = False, num_images: int | None = None, batch_size: int = 160,
                         seconds: float | None = None, size: int = 256, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Build the synthetic cache, measure the loader and memcpy; return the numbers (see the module docstring)."""
    num_images = num_images or (3000 if quick else COCO_TRAIN_IMAGES)
    seconds = seconds or (1.0 if quick else 10.0)
    shard_size = 256 if quick else 1024
    load_before = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    image_bytes = 3 * size * size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the training process's own threads do not gather (see bench.data)
    tmp = tempfile.mkdtemp(prefix="joint_colsr_loader_", dir=work_dir)
    try:
        start = time.perf_counter()
        root = make_synthetic_cache(Path(tmp) / "cache", num_images, size, shard_size=shard_size)
        generate_s = time.perf_counter() - start
        # Before any map of it exists: posix_fadvise cannot drop pages a process has mapped.
        cold = cold_read_images_per_s(root / "train-00000.npy", image_bytes)
        start = time.perf_counter()
        modules = {}
        for gather_threads in (GATHER_THREADS, 1):
            modules[gather_threads] = ColSRDataModule(None, cache=str(root), batch_size=batch_size, num_workers=0,
                                                      input_size=min(96, size), output_size=size, seed=0, pin_memory=False,
                                                      cache_gather_threads=gather_threads)
            modules[gather_threads].setup("fit")
        dm = modules[GATHER_THREADS]
        open_s = time.perf_counter() - start
        # The roof with the loader's own thread count, half its runs before the loader and half after.
        roofs = memcpy_roof(image_bytes, batch_size, seconds / 4, GATHER_THREADS, ROOF_RUNS // 2 + ROOF_RUNS % 2)
        loader = measure_loader(dm, seconds)
        one_thread = measure_loader(modules[1], seconds / 2)
        roofs += memcpy_roof(image_bytes, batch_size, seconds / 4, GATHER_THREADS, ROOF_RUNS // 2)
        augment_rate = cpu_augment_images_per_s(dm, seconds / 4)
        # With a GPU: pinned ring and the real copy of each batch (nothing stands in for it without one).
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        to_device = None if device is None else measure_loader(dm, seconds / 2, device=device)
        cold_root = make_synthetic_cache(Path(tmp) / "cold", COLD_SHARDS * shard_size, size, shard_size=shard_size,
                                         real_shards=COLD_SHARDS, seed=1)
        cold_warm = measure_cold_and_warm(cold_root, size, batch_size, GATHER_THREADS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        torch.set_num_threads(threads)
    ratio = ratio_with_spread(loader["images_per_s"], roofs)
    memcpy = ratio["roof_median"]
    return {
        "loader_cache_images_per_s": round(loader["images_per_s"], 1),
        "loader_vs_memcpy": ratio["ratio"],
        "loader_cache": {
            "loader_vs_memcpy_spread": [ratio["low"], ratio["high"]],
            "memcpy_threads": GATHER_THREADS,
            "device_crops_vs_pil": device_crops_vs_pil(16 if quick else 200),
            "main_thread_us_per_image": round(1e6 * loader["main_thread_s_per_image"], 3),
            "images_per_s_one_gather_thread": round(one_thread["images_per_s"], 1),
            "memcpy_images_per_s": round(memcpy, 1),
            "memcpy_gb_per_s": round(memcpy * image_bytes / 1e9, 2),
            "memcpy_images_per_s_runs": [round(r, 1) for r in roofs],
            "memcpy_spread_max_over_min": ratio["roof_spread"],
            "cpu_augment_images_per_s": round(augment_rate, 1),
            "cold_read_images_per_s": None if cold is None else round(cold, 1),
            "cold": cold_warm,
            "with_host_to_device": None if to_device is None else {
                "images_per_s": round(to_device["images_per_s"], 1), "pinned": True, "device": torch.cuda.get_device_name(device),
                "main_thread_us_per_image": round(1e6 * to_device["main_thread_s_per_image"], 3)},
            "target_images_per_s": TARGET_IMAGES_PER_S,
            "synthetic_cache_seconds": round(generate_s, 1),
            "open_seconds": round(open_s, 2),
            "measured_images": loader["images"], "measured_seconds": round(loader["seconds"], 2),
            "settings": {"images": num_images, "image": f"{size}x{size} uint8 ({image_bytes} bytes)", "batch_size": batch_size,
                         "shard_size": shard_size, "seconds": seconds, "quick": quick, "augmentation": "flip (on the device)"},
            "load_average_before": load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        },
    }


def write_results(result: dict[str, Any], out_dir: Path) -> None:
    """Read-modify-write ``results.json`` (only this benchmark's keys) and this section of ``RESULTS.md``."""
    merge_results(out_dir, result)
    replace_report_section(out_dir, REPORT_BEGIN, REPORT_END, render_markdown(result))


def render_markdown(r: dict[str, Any]) -> str:
    d = r["loader_cache"]
    s = d["settings"]
    cold = f"{d['cold_read_images_per_s']:,.0f}" if d.get("cold_read_images_per_s") else "-"
    h2d = f"{d['with_host_to_device']['images_per_s']:,.0f} ({d['with_host_to_device']['device']})" if d.get("with_host_to_device") \
        else "no GPU in this run"
    c = d["cold"]
    share = c["resident_share_after_dontneed"]
    resident = "not measured" if share is None else f"{share:.0%} of its pages" + (" (not dropped: cold = warm)" if share > 0.5 else "")
    return "\n".join([
        "## Cache loader at COCO scale: images per second delivered vs memcpy",
        "",
        (f"{s['images']:,} cached training images of {s['image']} (a synthetic cache: hard links of real shards; "
         f"warm page cache), batch {s['batch_size']}, `ColSRDataModule(data.cache=...).train_dataloader()` iterated for "
         f"{s['seconds']:g} s at steady state. Load average before / after: {d['load_average_before']} / {d['load_average_after']}. "
         f"{d['date_utc']} UTC{' (quick: the numbers mean nothing)' if s['quick'] else ''}."),
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| `loader_cache_images_per_s` (target {d['target_images_per_s']:,}) | **{r['loader_cache_images_per_s']:,.0f}** |",
        f"| memcpy of {s['image'].split(' ')[0]} images, images/s ({d['memcpy_gb_per_s']} GB/s) | {d['memcpy_images_per_s']:,.0f} |",
        f"| memcpy roof: median of {len(d['memcpy_images_per_s_runs'])} runs with {d['memcpy_threads']} threads, highest / lowest | "
        f"x{d['memcpy_spread_max_over_min']:.2f} |",
        f"| `loader_vs_memcpy` (target 0.5), against the highest and lowest roof run | **{r['loader_vs_memcpy']:.2f}** "
        f"({d['loader_vs_memcpy_spread'][0]:.2f} to {d['loader_vs_memcpy_spread'][1]:.2f}) |",
        f"| the same loader with 1 gather thread (`data.cache_gather_threads=1`), images/s | {d['images_per_s_one_gather_thread']:,.0f} |",
        f"| training process main thread, us of CPU per image | {d['main_thread_us_per_image']:.2f} |",
        f"| crops + flips (`geometry.augment`, a device op) run on this CPU, images/s | {d['cpu_augment_images_per_s']:,.0f} |",
        f"| read from disk (page cache dropped), images/s | {cold} |",
        f"| pinned ring + copy to the GPU (non_blocking, synchronized), images/s | {h2d} |",
        f"| cold: one epoch of {c['images_per_epoch']:,} distinct images, shards dropped from the page cache, images/s "
        f"(resident after `DONTNEED`: {resident}) | {c['cold_images_per_s']:,.0f} |",
        f"| warm: the same loader's next epoch, images/s | {c['warm_images_per_s']:,.0f} |",
        "",
        "Crops on the device (whole-pixel boxes, `geometry.crop_resize`) vs PIL's `resize_box` on 384-pixel cached "
        "images, 256-pixel crops (`device_crops_vs_pil`): "
        + "; ".join(f"vs the {name.replace('_', ' ')}: mean {v['mean_abs']} levels, max {v['max_abs']:.0f}, {v['psnr_db']} dB"
                    for name, v in d["device_crops_vs_pil"].items()) + ".",
        "",
        (f"Reproduce: `python -m joint_colsr.bench.loader` (also part of `make bench`); the synthetic cache took "
         f"{d['synthetic_cache_seconds']} s to make and {d['open_seconds']} s to open."),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3,000 images, 1 s: a smoke test, not a measurement")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=160)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the synthetic cache goes (default: the temp folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"), help="folder of results.json and RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_loader_benchmark(quick=args.quick, num_images=args.images, batch_size=args.batch_size,
                                  seconds=args.seconds, work_dir=args.work_dir)
    write_results(result, args.out)
    print(render_markdown(result))


if __name__ == "__main__":
    main()
