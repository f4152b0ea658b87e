"""COCO start-up benchmark: seconds and peak memory from ``data=coco`` to the lists of photos.

    python -m joint_colsr.bench.coco_startup              # full scale: 118,287 + 5,000 images, ~500 MB of JSON
    python -m joint_colsr.bench.coco_startup --quick      # 2,000 + 100 images, a smoke test

On a synthetic COCO 2017 layout (:mod:`joint_colsr.bench.coco_synth`), each measurement is
a fresh Python process (what a run, or one DDP rank, is) that imports the suite, then builds
the data source and lists what its stage needs; it reports the wall and CPU seconds of that
step and its peak resident memory above the process after its imports (Linux: the
high-water mark ``VmHWM``, reset after the imports, minus ``VmRSS`` then):

* ``pycocotools``: today's reference, ``COCO(instances_train2017.json)`` alone;
* ``first_start``: ``CocoSource(validation=heldout).split()`` (``data=coco`` training) with
  no index: parses the train2017 annotations (the held-out slice is part of them) and
  stores their compact index;
* ``second_start``: the same again: reads the index;
* ``eval_first_start``, ``eval_start``: a ``test`` stage with ``validation=val2017`` (what
  ``eval`` does), first and second time: val2017 only;
* ``first_start_ranks_at_once``: 8 processes making the first start together (DDP ranks):
  one parses, the others wait for its index; the slowest one's seconds and the memory
  peaks of all.

The annotation files were just written, so they are in the page cache: a first start on a
cold disk adds the time to read ~500 MB. Writes ``coco_startup`` (and the headline keys
``coco_second_start_seconds``, ``coco_second_start_peak_gib``) to ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from joint_colsr.bench import merge_results, replace_report_section

log = logging.getLogger(__name__)

REPORT_BEGIN = "<!-- BEGIN coco start-up benchmark (python -m joint_colsr.bench.coco_startup) -->"
REPORT_END = "<!-- END coco start-up benchmark -->"
#: The issue's targets for a second start on full COCO.
TARGET_SECONDS, TARGET_GIB = 5.0, 0.5
QUICK_SCALE = (2_000, 100)

#: Run in the child: the step being measured, after the imports every run pays anyway.
_CHILD = r"""
import json, resource, sys, time
what, root, index_dir, held_out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
from joint_colsr.data.coco import CocoSource
if what == "pycocotools":
    import contextlib, io
    from pycocotools.coco import COCO


def memory(key):
    # /proc/self/status, bytes; None off Linux
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key + ":"))
    except (OSError, StopIteration):
        return None


# The peak from here on: reset the high-water mark to the current RSS (Linux >= 4.0). Not
# ru_maxrss: Linux carries it across fork + exec, so it starts at the parent's RSS.
try:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
except OSError:
    pass
imports = memory("VmRSS")
import logging


class Origins(logging.Handler):
    # how each annotation index was got ("COCO train2017: annotation index parsed ..." / "read from ...")
    parsed = 0

    def emit(self, record):
        Origins.parsed += "annotation index parsed" in record.getMessage()


logging.getLogger("joint_colsr.data.coco").addHandler(Origins())
logging.getLogger("joint_colsr.data.coco").setLevel(logging.INFO)
before = resource.getrusage(resource.RUSAGE_SELF)
wall = time.perf_counter()
if what == "pycocotools":
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(f"{root}/annotations/instances_train2017.json")
    counts = {"train": len(coco.imgs)}
elif what.startswith("eval"):
    source = CocoSource(root, validation="val2017", index_dir=index_dir)
    counts = {"val": len(source.validation_items()), "categories": len(source.categories)}
else:
    source = CocoSource(root, validation="heldout", val_images=held_out, index_dir=index_dir)
    train, val = source.split()
    counts = {"train": len(train), "val": len(val), "categories": len(source.categories)}
wall = time.perf_counter() - wall
after = resource.getrusage(resource.RUSAGE_SELF)
peak = memory("VmHWM")
if imports is None or peak is None:  # not Linux: ru_maxrss, an upper bound of the step's peak
    imports, peak = 0, after.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
print(json.dumps({"seconds": wall, "cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                  "peak_above_imports_bytes": max(0, peak - imports), "imports_rss_bytes": imports, "counts": counts,
                  "indexes_parsed": Origins.parsed}))
"""


def measure_starts(what: str, root: Path, index_dir: Path, held_out: int = 5000, processes: int = 1) -> list[dict[str, Any]]:
    """``processes`` fresh processes doing ``what`` at once (see the module docs; ``held_out``:
    the held-out slice), as DDP ranks start; the numbers of each."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]))
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, what, str(root), str(index_dir), str(held_out)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(processes)]
    outs = []
    for child in children:
        stdout, stderr = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"coco start-up child ({what}) failed: {stderr[-2000:]}")
        out = json.loads(stdout.strip().splitlines()[-1])
        out["peak_above_imports_gib"] = out["peak_above_imports_bytes"] / 2**30
        outs.append(out)
    log.info("coco start-up: %s x%d: %s", what, processes, "; ".join(
        f"{o['seconds']:.2f} s (CPU {o['cpu_seconds']:.2f} s), peak {o['peak_above_imports_gib']:.3f} GiB above the imports" for o in outs))
    return outs


def measure_start(what: str, root: Path, index_dir: Path, held_out: int = 5000) -> dict[str, Any]:
    """One fresh process doing ``what``; its numbers."""
    return measure_starts(what, root, index_dir, held_out)[0]


def run_coco_startup_benchmark(quick: bool = False, root: str | Path | None = None, work_dir: str | Path | None = None,
                               scale: tuple[int, int] | None = None, ranks: int | None = None) -> dict[str, Any]:
    """Write a synthetic COCO (or use ``root``, one written by :mod:`joint_colsr.bench.coco_synth`)
    and measure each start in its own process; return the numbers.

    Args:
        quick: a tiny layout (:data:`QUICK_SCALE`): checks that it runs.
        root: an existing layout to measure instead of writing one.
        work_dir: where the temporary layout and indexes go (default: the system's temp).
        scale: ``(train images, val images)`` of the written layout (default: COCO's, or quick's).
        ranks: processes started at once, as DDP ranks, for ``first_start_ranks_at_once``
            (default 8; 2 when quick).
    """
    ranks = ranks or (2 if quick else 8)
    from joint_colsr.bench.coco_synth import FULL_SCALE, make_synthetic_coco

    load_before = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    train_images, val_images = scale or (QUICK_SCALE if quick else (FULL_SCALE["train2017"][0], FULL_SCALE["val2017"][0]))
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        if root is None:
            root = Path(tmp) / "coco"
            start = time.perf_counter()
            layout = make_synthetic_coco(root, train_images, val_images)
            log.info("coco start-up: wrote the synthetic layout in %.0f s: %s", time.perf_counter() - start, layout)
        else:
            root = Path(root)
            layout = {folder: {"images": len(os.listdir(root / folder)),
                               "bytes": (root / "annotations" / f"instances_{folder}.json").stat().st_size} for folder in FULL_SCALE}
        index_dir = Path(tmp) / "index"  # fresh: the first start finds no index
        shutil.rmtree(index_dir, ignore_errors=True)
        held_out = min(5000, layout["train2017"]["images"] // 10)  # data=coco's 5,000 at full scale
        starts = {what: measure_start(what, root, index_dir, held_out) for what in
                  ("pycocotools", "first_start", "second_start", "eval_first_start", "eval_start")}
        index_bytes = sum(p.stat().st_size for p in index_dir.glob("*.npz"))
        # DDP: every rank starts at once with no index; one parses each file, the others wait and read.
        ranks = measure_starts("first_start", root, Path(tmp) / "index_ranks", held_out, processes=ranks)
        together = {"ranks": len(ranks), "slowest_seconds": max(r["seconds"] for r in ranks),
                    "indexes_parsed": sum(r["indexes_parsed"] for r in ranks),
                    "peak_above_imports_gib_sum": sum(r["peak_above_imports_gib"] for r in ranks),
                    "peak_above_imports_gib_max": max(r["peak_above_imports_gib"] for r in ranks)}
    second = starts["second_start"]
    return {
        "coco_second_start_seconds": round(second["seconds"], 3),
        "coco_second_start_peak_gib": round(second["peak_above_imports_gib"], 3),
        "starts": starts,
        "first_start_ranks_at_once": together,
        "layout": layout,
        "index_bytes": index_bytes,
        "targets": {"second_start_seconds": TARGET_SECONDS, "second_start_peak_gib": TARGET_GIB},
        "quick": quick,
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }


def write_results(result: dict[str, Any], out_dir: Path) -> None:
    """Read-modify-write ``results.json`` (only this benchmark's keys) and its section of ``RESULTS.md``."""
    merge_results(out_dir, {
        "coco_second_start_seconds": result["coco_second_start_seconds"],
        "coco_second_start_peak_gib": result["coco_second_start_peak_gib"],
        "coco_startup": {k: v for k, v in result.items() if not k.startswith("coco_")},
    })
    replace_report_section(out_dir, REPORT_BEGIN, REPORT_END, render_markdown(result))


def render_markdown(r: dict[str, Any]) -> str:
    train, val = r["layout"]["train2017"], r["layout"]["val2017"]
    rows = [
        ("pycocotools `COCO(instances_train2017.json)` (before: every start, every rank)", "pycocotools"),
        ("first start: training's `split()` (held-out validation), parses train2017, stores its index", "first_start"),
        ("**second start**: the same from the index (every later start, every rank)", "second_start"),
        ("eval, first start: `test` stage, `validation=val2017`: parses val2017 alone", "eval_first_start"),
        ("eval, second start: val2017's index alone", "eval_start"),
    ]
    lines = [
        "## COCO start-up: seconds and memory to list the photos",
        "",
        f"Synthetic COCO 2017 layout ({train['images']:,} + {val['images']:,} images, "
        f"{train['bytes'] / 1e6:.0f} + {val['bytes'] / 1e6:.0f} MB of instances JSON, in the page cache){' (quick: tiny scale, the numbers mean nothing)' if r['quick'] else ''}. "
        f"Each start is a fresh process; peak = resident memory above that process after its imports. "
        f"Load average before / after: {r['load_average_before']} / {r['load_average_after']}; {r['date_utc']} UTC.",
        "",
        "| step | seconds | CPU seconds | peak GiB above imports |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, key in rows:
        s = r["starts"][key]
        lines.append(f"| {label} | {s['seconds']:.2f} | {s['cpu_seconds']:.2f} | {s['peak_above_imports_gib']:.3f} |")
    lines += [
        "",
        f"Second start: `coco_second_start_seconds` = {r['coco_second_start_seconds']}, `coco_second_start_peak_gib` = "
        f"{r['coco_second_start_peak_gib']} (targets < {r['targets']['second_start_seconds']:g} s, < {r['targets']['second_start_peak_gib']:g} GiB). "
        f"The stored indexes take {r['index_bytes'] / 1e6:.1f} MB.",
        "",
        f"First start of {r['first_start_ranks_at_once']['ranks']} processes at once (DDP ranks, no index yet): the slowest took "
        f"{r['first_start_ranks_at_once']['slowest_seconds']:.2f} s; {r['first_start_ranks_at_once']['indexes_parsed']} annotation "
        f"file(s) parsed in all (the others waited and read its index); memory peaks above the imports "
        f"{r['first_start_ranks_at_once']['peak_above_imports_gib_max']:.3f} GiB at most, "
        f"{r['first_start_ranks_at_once']['peak_above_imports_gib_sum']:.3f} GiB summed over the processes.",
        f"Reproduce: `python -m joint_colsr.bench.coco_startup{' --quick' if r['quick'] else ''}` "
        "(or `python -m joint_colsr.bench --sections coco_startup`).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SCALE[0]:,} + {QUICK_SCALE[1]:,} images: a smoke test")
    parser.add_argument("--root", type=Path, default=None, help="an existing synthetic layout (python -m joint_colsr.bench.coco_synth)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the temporary layout goes (default: the system's temp)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"), help="folder of results.json and RESULTS.md")
    parser.add_argument("--ranks", type=int, default=None, help="processes of the at-once first start (default 8; 2 with --quick)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_coco_startup_benchmark(quick=args.quick, root=args.root, work_dir=args.work_dir, ranks=args.ranks)
    write_results(result, args.out)
    print(render_markdown(result))


if __name__ == "__main__":
    main()
