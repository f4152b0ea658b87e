"""Data-path benchmark: images per second delivered to the model by three pipelines, side by side.

    python -m joint_colsr.bench.data                 # writes benchmarks/results.json and RESULTS.md
    python -m joint_colsr.bench.data --quick         # a few seconds, for a smoke test

(a) **naive**: what reference colorization code does per sample in ``__getitem__``: PIL
    decode, resize to 256x256, scikit-image ``rgb2lab`` (float64), L* downscaled with
    ``skimage.transform.resize``, float32 tensors out.
(b) **jpeg**: this suite's file path: :class:`ColSRDataModule` over an :class:`ImageFolder`
    (decode, random resized crop, resize, flip), uint8 out; LAB on the device.
(c) **cache**: the same data module reading a decoded-image cache (``data.cache``), uint8 out.

All three read the same photos: real photographs (the embedded samples) cropped and
resized to 640x480 / 480x640 and saved as JPEG quality 90, as COCO stores them. Each
pipeline runs in a DataLoader with the same batch size and worker count; the rate is
images delivered per second after the first batches (worker start-up excluded), the best
of ``repeats`` interleaved runs (a shared machine is noisy: best-of is the least disturbed
run). On a CPU-only machine (b) and (c) deliver uint8 and the LAB conversion, which a GPU
does in microseconds, is measured separately on the CPU and reported next to them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from joint_colsr.bench import merge_results, replace_report_section
from joint_colsr.color import rgb_uint8_to_lab_batch
from joint_colsr.data import ColSRDataModule, ImageFolder, SamplePhotos, build_cache

log = logging.getLogger(__name__)

GPU_TARGET_IMAGES_PER_S = 10_000
REPORT_BEGIN = "<!-- BEGIN data benchmark (python -m joint_colsr.bench.data) -->"
REPORT_END = "<!-- END data benchmark -->"


class NaiveColorizationDataset(Dataset):
    """(a): the per-sample pipeline of typical reference colorization code, all on the CPU."""

    def __init__(self, paths: list[Path], length: int, output_size: int = 256, input_size: int = 96) -> None:
        self.paths = paths
        self.length = length
        self.output_size = output_size
        self.input_size = input_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from skimage.color import rgb2lab
        from skimage.transform import resize

        img = Image.open(self.paths[index % len(self.paths)]).convert("RGB")
        img = img.resize((self.output_size, self.output_size), Image.Resampling.BICUBIC)
        lab = rgb2lab(np.asarray(img))
        l_low = resize(lab[..., 0], (self.input_size, self.input_size), anti_aliasing=True)
        return {
            "l_lowres": torch.from_numpy(l_low[None].astype(np.float32)),
            "ab_target": torch.from_numpy(lab[..., 1:].transpose(2, 0, 1).astype(np.float32)),
        }


def make_benchmark_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` COCO-like JPEGs (640x480 or 480x640, quality 90) cut from the embedded photos."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [item.array for item in SamplePhotos().items()]
    paths = []
    for i in range(count):
        rgb = photos[i % len(photos)]
        height, width = rgb.shape[:2]
        size = (480, 640) if i % 4 == 3 else (640, 480)
        scale = rng.uniform(0.6, 1.0)
        w, h = width * scale, height * scale
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        img = Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC, box=(x0, y0, x0 + w, y0 + h))
        path = folder / f"{i:05d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def measure(batches: Iterable[Any], count: Any, seconds: float, warmup_batches: int = 2) -> float:
    """Images per second over ``seconds`` of ``batches``, after ``warmup_batches``."""
    it = iter(batches)
    for _ in range(warmup_batches):
        next(it)
    images, start = 0, time.perf_counter()
    for batch in it:
        images += count(batch)
        if time.perf_counter() - start >= seconds:
            break
    return images / (time.perf_counter() - start)


def _datamodule_batches(dm: ColSRDataModule, device: str) -> Iterable[Any]:
    loader = dm.train_dataloader()
    for epoch in range(10**6):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            if device != "cpu":  # the model's device converts to LAB (what training does)
                batch = dm.on_after_batch_transfer({k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                                                    for k, v in batch.items()}, 0)
                torch.cuda.synchronize()
            yield batch


def _loader_batches(loader: DataLoader) -> Iterable[Any]:
    while True:
        yield from loader


def machine_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu} ({platform.system()} {platform.release()})"


def run_data_benchmark(
    quick: bool = False,
    device: str = "cpu",
    num_photos: int | None = None,
    seconds: float | None = None,
    repeats: int | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    output_size: int = 256,
    input_size: int = 96,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Measure (a) naive, (b) JPEG and (c) cache pipelines side by side; return the numbers.

    Args:
        quick: tiny settings (a smoke test, not a measurement).
        device: ``"cpu"`` or ``"cuda"``: where (b) and (c) convert to LAB inside the loop.
        num_photos: distinct JPEGs (default 96; 16 when quick).
        seconds: measuring time per pipeline and repeat (default 8; 2 when quick).
        repeats: interleaved runs per pipeline; the best is reported (default 2; 1 when quick).
        batch_size, num_workers: DataLoader settings shared by all three (workers: all cores).
        work_dir: where photos and the cache go (default: a temporary folder, removed).

    Returns:
        dict with ``data_cache_vs_naive`` (the ratio (c)/(a)), the rates in images/s,
        per-core rates, cores needed to feed a GPU at 10,000 images/s, and the settings.
    """
    num_photos = num_photos or (16 if quick else 96)
    seconds = seconds or (2.0 if quick else 8.0)
    repeats = repeats or (1 if quick else 2)
    num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    load_before = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    threads = torch.get_num_threads()
    # One torch thread in this process too: a loader core is one thread, and on a busy
    # machine multi-threaded batch collation spins (torch.stack of 32 images: 2.6 ms with
    # one thread, 780 ms with two on this shared 2-core VM).
    torch.set_num_threads(1)
    try:
        return _run(quick, device, num_photos, seconds, repeats, batch_size, num_workers, output_size, input_size,
                    work_dir, load_before)
    finally:
        torch.set_num_threads(threads)


def _run(quick, device, num_photos, seconds, repeats, batch_size, num_workers, output_size, input_size, work_dir,
         load_before) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        root = Path(tmp)
        paths = make_benchmark_photos(root / "photos", num_photos)
        folder = ImageFolder(str(root / "photos"), val_fraction=0.05)
        start = time.perf_counter()
        build_cache(folder, root / "cache", output_size=output_size, num_workers=num_workers, progress=False)
        cache_build_rate = num_photos / (time.perf_counter() - start)
        common = dict(batch_size=batch_size, num_workers=num_workers, input_size=input_size, output_size=output_size,
                      train_samples_per_epoch=max(4096, 64 * batch_size), seed=0, pin_memory=device != "cpu")
        jpeg_dm = ColSRDataModule(folder, **common)
        cache_dm = ColSRDataModule(folder, cache=str(root / "cache"), **common)
        for dm in (jpeg_dm, cache_dm):
            dm.setup("fit")
        naive_loader = DataLoader(NaiveColorizationDataset(paths, 10**6, output_size, input_size), batch_size=batch_size,
                                  shuffle=True, num_workers=num_workers, persistent_workers=num_workers > 0)
        pipelines = {
            "naive": (lambda: _loader_batches(naive_loader), lambda b: len(b["ab_target"])),
            "jpeg": (lambda: _datamodule_batches(jpeg_dm, device), lambda b: len(b["rgb" if "rgb" in b else "rgb_target"])),
            "cache": (lambda: _datamodule_batches(cache_dm, device), lambda b: len(b["rgb" if "rgb" in b else "rgb_target"])),
        }
        runs: dict[str, list[float]] = {name: [] for name in pipelines}
        for _ in range(repeats):  # interleaved, so a burst of load on the machine hits all three alike
            for name, (batches, count) in pipelines.items():
                runs[name].append(round(measure(batches(), count, seconds), 1))
                log.info("data bench: %s %.0f images/s", name, runs[name][-1])
        # Per core: each path in one process (num_workers=0), the cost one worker core pays.
        per_core = {}
        single = dict(common, num_workers=0)
        per_core["naive"] = measure(_loader_batches(DataLoader(NaiveColorizationDataset(paths, 10**6, output_size, input_size),
                                                               batch_size=batch_size, shuffle=True)),
                                    lambda b: len(b["ab_target"]), seconds / 2)
        for name, cache in (("jpeg", None), ("cache", str(root / "cache"))):
            dm = ColSRDataModule(folder, cache=cache, **single)
            dm.setup("fit")
            per_core[name] = measure(_datamodule_batches(dm, "cpu"), lambda b: len(b["rgb"]), seconds / 2)
        lab_rate = _cpu_lab_rate(batch_size, output_size, input_size, seconds / 2)
    best = {name: max(values) for name, values in runs.items()}
    result: dict[str, Any] = {
        "data_cache_vs_naive": round(best["cache"] / best["naive"], 1),
        "data_jpeg_vs_naive": round(best["jpeg"] / best["naive"], 2),
        "images_per_s": best,
        "images_per_s_runs": runs,
        "images_per_s_one_core": {k: round(v, 1) for k, v in per_core.items()},
        "cores_to_feed_10k_images_per_s": {k: round(GPU_TARGET_IMAGES_PER_S / v, 1) for k, v in per_core.items()},
        "cpu_lab_conversion_images_per_s": round(lab_rate, 1),
        "cache_build_images_per_s": round(cache_build_rate, 1),
        "lab_on": device,
        "settings": {"photos": num_photos, "photo_size": "640x480 JPEG q90", "batch_size": batch_size,
                     "num_workers": num_workers, "seconds": seconds, "repeats": repeats,
                     "output_size": output_size, "input_size": input_size, "quick": quick},
        "machine": machine_name(),
        "load_average_before": load_before,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }
    return result


def _cpu_lab_rate(batch_size: int, output_size: int, input_size: int, seconds: float) -> float:
    """Images/s of the device-side conversion (kornia LAB + L* downscale) run on this CPU."""
    rgb = torch.randint(0, 256, (batch_size, 3, output_size, output_size), dtype=torch.uint8)
    rgb_uint8_to_lab_batch(rgb, input_size)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        rgb_uint8_to_lab_batch(rgb, input_size)
        images += batch_size
    return images / (time.perf_counter() - start)


def write_results(result: dict[str, Any], out_dir: Path) -> None:
    """Read-modify-write ``results.json`` (only this benchmark's keys) and this section of ``RESULTS.md``."""
    merge_results(out_dir, {
        "data_cache_vs_naive": result["data_cache_vs_naive"],
        "data_pipeline": {k: v for k, v in result.items() if k != "data_cache_vs_naive"},
    })
    replace_report_section(out_dir, REPORT_BEGIN, REPORT_END, render_markdown(result))


def render_markdown(r: dict[str, Any]) -> str:
    s, rate, one = r["settings"], r["images_per_s"], r["images_per_s_one_core"]
    feed = r["cores_to_feed_10k_images_per_s"]
    lab = ("converted to LAB on the GPU inside the loop" if r["lab_on"] != "cpu"
           else f"uint8 out; LAB runs on the model's device (on this CPU it would cost {r['cpu_lab_conversion_images_per_s']:.0f} images/s of the main process)")
    rows = [
        ("(a) naive: PIL + resize + skimage `rgb2lab` in `__getitem__`", "naive", "float32 LAB out"),
        ("(b) ours, JPEG files (`data=folder`)", "jpeg", lab),
        ("(c) ours, decoded-image cache (`data.cache=DIR`)", "cache", lab),
    ]
    lines = [
        "## Data pipeline: images per second delivered to the model",
        "",
        f"Machine: {r['machine']}; load average before the run {r['load_average_before']} "
        f"(shared with other jobs: the numbers are noisy). {r['date_utc']} UTC. "
        f"{s['photos']} photos ({s['photo_size']}), batch {s['batch_size']}, {s['num_workers']} loader workers, "
        f"best of {s['repeats']} interleaved runs of {s['seconds']:g} s each.",
        "",
        "| pipeline | images/s | x naive | one core, images/s | cores to feed 10,000 images/s | output |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, key, out in rows:
        lines.append(f"| {label} | {rate[key]:.0f} | {rate[key] / rate['naive']:.1f} | {one[key]:.0f} | {feed[key]:.1f} | {out} |")
    lines += [
        "",
        f"`data_cache_vs_naive` = {r['data_cache_vs_naive']}. Building the cache ran at {r['cache_build_images_per_s']:.0f} images/s "
        "(decode + squash-resize, all workers). One-core rates are the whole path in one process "
        "(batch collation included); a GPU training at 10,000 images/s needs that many loader cores.",
        f"Reproduce: `python -m joint_colsr.bench.data` ({'quick smoke settings' if s['quick'] else 'default settings'}).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds; a smoke test, not a measurement")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--photos", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: all cores)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"), help="folder of results.json and RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_data_benchmark(quick=args.quick, device=args.device, num_photos=args.photos, seconds=args.seconds,
                                repeats=args.repeats, batch_size=args.batch_size, num_workers=args.workers)
    write_results(result, args.out)
    print(render_markdown(result))


if __name__ == "__main__":
    main()
