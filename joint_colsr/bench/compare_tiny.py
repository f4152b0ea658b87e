"""Wall time of ``compare``'s tiny form: ``python -m joint_colsr.bench.compare_tiny [--out FILE]``.

Runs the README's tiny form (6 contenders x 2 seeds, ``--budget-steps 63``, ``debug=tiny``)
in a fresh process into an empty folder (every run in compare's process, one after another),
then the same command again (every run reused), then, side by side, the same form into
another empty folder with ``--jobs 2`` (each run a subprocess, two at once), and writes the
three wall times with the machine and its load before and after to ``--out`` (default
``benchmarks/compare_tiny.json``). Numbers depend on the machine's load: run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The README's tiny form (Joint or cascade? section).
TINY_FORM = ["--seeds", "0", "1", "--budget-steps", "63", "--train", "debug=tiny", "data.train_samples_per_epoch=64",
             "trainer.limit_train_batches=null", "--eval", "data.val_views=1"]


def timed_compare(out: Path, *extra: str) -> dict:
    """One ``python -m joint_colsr.compare`` of the tiny form (plus ``extra``) into ``out``, in a fresh process."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "joint_colsr.compare", *TINY_FORM, *extra, "--out", str(out)], env=env,
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"compare failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return {"seconds": round(seconds, 1), "last_line": proc.stdout.strip().splitlines()[-1]}


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/compare_tiny.json")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="compare_tiny_") as tmp:
        fresh = timed_compare(Path(tmp) / "cmp")
        reused = timed_compare(Path(tmp) / "cmp")
        comparison_md = (Path(tmp) / "cmp" / "comparison.md").read_text()
        parallel = timed_compare(Path(tmp) / "cmp_jobs2", "--jobs", "2")
    result = {"command": "python -m joint_colsr.compare " + " ".join(TINY_FORM),
              "machine": {"cpus": os.cpu_count(), "processor": _processor(),
                          "python": platform.python_version()},
              "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
              "fresh": fresh, "reused": reused, "fresh_jobs2_subprocesses": parallel,
              "jobs2_over_in_process": round(parallel["seconds"] / fresh["seconds"], 2), "comparison_md": comparison_md,
              "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("load_before", "load_after", "fresh", "reused",
                                                       "fresh_jobs2_subprocesses", "jobs2_over_in_process")}))


if __name__ == "__main__":
    main()
