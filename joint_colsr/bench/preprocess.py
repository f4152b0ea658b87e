"""Preprocess benchmark: cache build throughput and decode-pool utilisation, and index open time.

    python -m joint_colsr.bench.preprocess --photos 4096 --workers 2 --old-tree /tmp/colsr_old

builds a cache of the same ``--photos`` COCO-like JPEGs (640x480, q90: ``make_benchmark_photos``)
with the code of this tree and, with ``--old-tree DIR`` (a checkout of another commit, e.g.
``git worktree add /tmp/colsr_old <commit>``), with that tree's code, each in a fresh
process, and reports per tree: photos per second over the whole ``build_cache`` call and
**pool utilisation** = CPU seconds of the decoding processes (``RUSAGE_CHILDREN``, counted
when the pool is joined) / (workers x wall seconds): the share of the pool's time spent
working rather than waiting for the main thread. It needs no instrumentation of the code
measured, so an old commit measures the same way.

``--open-images N`` (default 118,287: COCO train2017) also times opening a cache index of
that many photos (COCO-like keys and labels, 1024 photos a shard) written in this tree's
format, with sparse shard files of the real sizes (no disk used): ``read_index`` and
``ImageCache.open(verify="quick")`` of a cache whose shards were verified before;
``--verify-mb`` times the sha256 pass that ``verify="quick"`` makes on a cache's first open.

Numbers depend on the machine's load: run it alone. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Run in a fresh interpreter with PYTHONPATH=<tree>: builds, then prints its measurements.
_MEASURE = """
import json, resource, sys, time
from joint_colsr.data import ImageFolder, build_cache
photos, cache, workers, shard_size, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
source = ImageFolder(photos, val_fraction=0.05)
n = len(source.items())
self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
start = time.perf_counter()
build_cache(source, cache, output_size=size, shard_size=shard_size, num_workers=workers, progress=False)
wall = time.perf_counter() - start
self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
pool = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
main = (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime)
print(json.dumps({"photos": n, "seconds": round(wall, 3), "photos_per_s": round(n / wall, 1),
                  "pool_cpu_s": round(pool, 2), "main_process_cpu_s": round(main, 2),
                  "pool_utilisation": round(pool / (max(workers, 1) * wall), 3)}))
"""


def measure_build(tree: Path, photos: Path, cache: Path, workers: int, shard_size: int, size: int) -> dict[str, Any]:
    """One cache build with the code of ``tree`` in a fresh process; its measurements."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(photos), str(cache), str(workers), str(shard_size), str(size)],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"cache build with the code of {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_index_open(root: Path, images: int, size: int = 256, shard_size: int = 1024, repeats: int = 3) -> dict[str, Any]:
    """Seconds to read and to open (``verify="quick"``) the index of a cache of ``images``
    training photos (and 5,000 validation ones), in this tree's format, shards as sparse files."""
    import numpy as np

    from joint_colsr.data.cache.build import write_index
    from joint_colsr.data.cache.store import CACHE_VERSION, COLOUR_HANDLING, VERIFIED_NAME, ImageCache, _stat_key, read_index
    from joint_colsr.data.views import WHOLE

    rng = np.random.default_rng(0)
    head = {"version": CACHE_VERSION, "source": {"type": "synthetic"}, "output_size": size,
            "sizes": {"train": size, "val": size}, "val_views": [list(WHOLE)], "layout": "synthetic",
            "colour": COLOUR_HANDLING, "filters": {"min_side": 16, "max_aspect": 10.0, "exclude_grayscale": True},
            "shard_size": shard_size, "splits": {}, "categories": {}, "skipped_at_start": {}}
    shards = []
    for name, count in (("train", images), ("val", 5000)):
        head["splits"][name] = {"num_items": count}
        for number, first in enumerate(range(0, count, shard_size)):
            n = min(shard_size, count - first)
            file_name = f"{name}-{number:05d}.npy"
            header = np.lib.format.header_data_from_array_1_0(np.empty((0, 3, size, size), np.uint8))
            header["shape"] = (n, 3, size, size)
            with open(root / file_name, "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                f.truncate(f.tell() + n * 3 * size * size)  # sparse: the real size, no blocks written
            keys = [f"train2017/{int(k):012d}.jpg" for k in rng.integers(0, 10**12, n)]
            labels = [sorted(int(c) for c in rng.choice(90, int(rng.integers(0, 8)), replace=False) + 1) for _ in range(n)]
            shards.append({"split": name, "file": file_name, "first_item": first, "num_items": n, "items_sha1": "synthetic",
                           "count": n, "bytes": (root / file_name).stat().st_size, "sha256": "synthetic",
                           "keys": keys, "labels": labels, "excluded": {}})
    write_index(root, head, shards)
    # Already verified (verify=quick remembers): this times the open of a cache in use, not its
    # first open, whose sha256 pass measure_first_use_verify times.
    (root / VERIFIED_NAME).write_text(json.dumps({s["file"]: {"stat": _stat_key(root / s["file"]), "sha256": s["sha256"]}
                                                  for s in shards}))

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return round(min(times), 4)

    opened = ImageCache.open(root, verify="quick")
    return {"images": sum(len(split) for split in opened.splits.values()),
            "index_bytes": sum(p.stat().st_size for p in root.glob("*.json*")),
            "read_index_s": best(lambda: read_index(root)), "open_quick_s": best(lambda: ImageCache.open(root, verify="quick"))}


def measure_first_use_verify(root: Path, megabytes: int = 512, repeats: int = 3) -> dict[str, Any]:
    """The cost of ``verify="quick"``'s first open: sha256 throughput over a shard-like file
    of ``megabytes`` of random bytes (best of ``repeats``; the file is in the page cache after
    the first pass, so this is the CPU's rate, not the disk's), and what that rate makes of
    a COCO train2017 cache (118,287 photos of 3 x 256 x 256 bytes)."""
    import numpy as np

    from joint_colsr.data.cache.store import sha256_of

    path = root / "shard.npy"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, megabytes << 20, dtype=np.uint8).tobytes())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sha256_of(path)
        times.append(time.perf_counter() - start)
    rate = megabytes / min(times)
    coco_gb = 118287 * 3 * 256 * 256 / 1e9
    return {"megabytes": megabytes, "sha256_mb_per_s": round(rate, 1),
            "coco_train2017_gb": round(coco_gb, 2), "coco_first_open_s": round(coco_gb * 1e3 / (rate * 1.048576), 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=4096, help="JPEGs to build from (default 4096)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: all cores)")
    parser.add_argument("--shard-size", type=int, default=1024, help="photos per shard (default 1024, as preprocess)")
    parser.add_argument("--size", type=int, default=256, help="cached side (default 256)")
    parser.add_argument("--old-tree", type=Path, default=None, help="a checkout of the code to compare with")
    parser.add_argument("--open-images", type=int, default=118287, help="training photos of the index-open timing (0: skip)")
    parser.add_argument("--verify-mb", type=int, default=512, help="size of the sha256 timing's file (0: skip)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where photos and caches go (default: a temp folder)")
    args = parser.parse_args(argv)

    from joint_colsr.bench.data import make_benchmark_photos

    here = Path(__file__).resolve().parents[2]
    result: dict[str, Any] = {"settings": {"photos": args.photos, "workers": args.workers, "shard_size": args.shard_size,
                                           "size": args.size, "cpus": os.cpu_count(),
                                           "load_before": [round(x, 2) for x in os.getloadavg()]}}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        root = Path(tmp)
        make_benchmark_photos(root / "photos", args.photos)
        trees = {"new": here, **({"old": args.old_tree.resolve()} if args.old_tree else {})}
        for name, tree in trees.items():
            result[name] = {"tree": str(tree), **measure_build(tree, root / "photos", root / f"cache_{name}", args.workers,
                                                                args.shard_size, args.size)}
        if "old" in result:
            result["new_vs_old_photos_per_s"] = round(result["new"]["photos_per_s"] / result["old"]["photos_per_s"], 2)
        if args.open_images:
            (root / "index").mkdir()
            result["index_open"] = measure_index_open(root / "index", args.open_images, args.size)
        if args.verify_mb:
            result["first_use_verify"] = measure_first_use_verify(root, args.verify_mb)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
