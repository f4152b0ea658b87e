"""The data benchmark's writer: read-modify-write of results.json (only its keys) and its RESULTS.md section."""

import json

import numpy as np
import pytest
import torch

from joint_colsr.bench.data import REPORT_BEGIN, REPORT_END, write_results


def _result(ratio):
    rates = {"naive": 10.0, "jpeg": 20.0, "cache": 10.0 * ratio}
    return {
        "data_cache_vs_naive": ratio, "data_jpeg_vs_naive": 2.0, "images_per_s": rates,
        "images_per_s_runs": {k: [v] for k, v in rates.items()}, "images_per_s_one_core": rates,
        "cores_to_feed_10k_images_per_s": {k: 10_000 / v for k, v in rates.items()},
        "cpu_lab_conversion_images_per_s": 50.0, "cache_build_images_per_s": 30.0, "lab_on": "cpu",
        "settings": {"photos": 4, "photo_size": "640x480 JPEG q90", "batch_size": 2, "num_workers": 0, "seconds": 1.0,
                     "repeats": 1, "output_size": 64, "input_size": 16, "quick": True},
        "machine": "test machine", "load_average_before": [0.0, 0.0, 0.0], "date_utc": "2026-01-01 00:00",
    }


def test_write_results_touches_only_its_own_keys_and_section(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"models": {"x": 1}}))
    (tmp_path / "RESULTS.md").write_text("# Benchmarks\n\n## Models\n\nkept\n")
    write_results(_result(30.0), tmp_path)
    write_results(_result(40.0), tmp_path)  # a second run replaces, never appends
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["models"] == {"x": 1} and results["data_cache_vs_naive"] == 40.0
    assert results["data_pipeline"]["images_per_s"]["cache"] == 400.0
    report = (tmp_path / "RESULTS.md").read_text()
    assert "## Models\n\nkept" in report and report.count(REPORT_BEGIN) == report.count(REPORT_END) == 1
    assert "test machine" in report and "| 400 | 40.0 |" in report


def test_loader_benchmark_on_a_tiny_synthetic_cache(tmp_path):
    """The COCO-size generator and the loader measurement, at tiny scale: the synthetic cache
    opens like a built one (hard links share the bytes), and the numbers land in results.json."""
    import os

    from joint_colsr.bench.loader import make_synthetic_cache, run_loader_benchmark
    from joint_colsr.bench.loader import write_results as write_loader_results
    from joint_colsr.data import ImageCache

    root = make_synthetic_cache(tmp_path / "c", num_images=50, size=16, shard_size=8, real_shards=2)
    split = ImageCache.open(root, verify="full").splits["train"]
    assert len(split) == 50 and len(split.files) == 7 and split.size == 16
    links = [os.stat(root / f) for f in split.files]
    assert links[2].st_ino == links[0].st_ino and links[3].st_ino == links[1].st_ino  # hard links
    assert links[6].st_ino not in {s.st_ino for s in links[:6]}  # the partial last shard is its own
    result = run_loader_benchmark(quick=True, num_images=64, batch_size=4, seconds=0.2, size=16, work_dir=tmp_path)
    rate, detail = result["loader_cache_images_per_s"], result["loader_cache"]
    assert rate > 0 and detail["memcpy_images_per_s"] > 0 and detail["main_thread_us_per_image"] >= 0
    assert abs(result["loader_vs_memcpy"] - rate / detail["memcpy_images_per_s"]) < 1e-3
    runs = detail["memcpy_images_per_s_runs"]
    assert len(runs) == 6 and detail["memcpy_threads"] == 2
    assert abs(detail["memcpy_images_per_s"] - float(np.median(runs))) < 0.1  # the median run is the roof
    low, high = detail["loader_vs_memcpy_spread"]
    assert low <= result["loader_vs_memcpy"] <= high
    # Without CUDA there is no host-to-device number (null, not a stand-in); with it, a real one.
    h2d = detail["with_host_to_device"]
    assert h2d is None if not torch.cuda.is_available() else (h2d["images_per_s"] > 0 and h2d["pinned"])
    # Cold and warm apart, over a cache of distinct images (quick: 2 shards of 256), each read once an epoch.
    cold = detail["cold"]
    assert cold["distinct_images"] == cold["images_per_epoch"] == 512
    assert cold["cold_images_per_s"] > 0 and cold["warm_images_per_s"] > 0
    if hasattr(os, "posix_fadvise"):
        assert cold["dontneed_asked"] is True
    if cold["resident_share_after_dontneed"] is not None:  # Linux: mincore says what DONTNEED did
        assert 0 <= cold["resident_share_after_dontneed"] <= 1 and cold["resident_share_after_cold_epoch"] == 1.0
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text(json.dumps({"models": {"x": 1}}))
    write_loader_results(result, tmp_path / "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["models"] == {"x": 1} and results["loader_vs_memcpy"] == result["loader_vs_memcpy"]
    assert "## Cache loader at COCO scale" in (tmp_path / "out" / "RESULTS.md").read_text()


def test_page_cache_residency_is_measured_and_dropping_asks_the_kernel(tmp_path):
    import os

    from joint_colsr.bench.loader import drop_from_page_cache, resident_share

    path = tmp_path / "shard.bin"
    path.write_bytes(os.urandom(1 << 20))
    path.read_bytes()
    if resident_share([path]) is None:
        pytest.skip("no mincore here")
    assert resident_share([path]) == 1.0  # just read: every page resident
    if drop_from_page_cache([path]):
        # Advice: disk filesystems drop the pages (nothing maps them), tmpfs cannot (its pages are the file).
        if _filesystem_of(path) in ("ext4", "xfs", "btrfs"):
            assert resident_share([path]) < 0.1
        path.read_bytes()
        assert resident_share([path]) == 1.0


def _filesystem_of(path) -> str | None:
    """The type of the filesystem holding ``path`` (the longest mount point above it, /proc/mounts)."""
    try:
        mounts = [line.split()[1:3] for line in open("/proc/mounts")]
    except OSError:
        return None
    resolved = str(path.resolve())
    above = [(point, kind) for point, kind in mounts if resolved == point or resolved.startswith(point.rstrip("/") + "/")]
    return max(above, key=lambda m: len(m[0]))[1] if above else None


def test_the_loader_ratio_carries_the_roofs_own_spread():
    from joint_colsr.bench.loader import ratio_with_spread

    spread = ratio_with_spread(100.0, [400.0, 250.0, 200.0, 300.0])
    assert spread == {"ratio": 0.364, "low": 0.25, "high": 0.5, "roof_median": 275.0, "roof_spread": 2.0}
