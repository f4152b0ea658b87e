"""The benchmark suite: ``python -m joint_colsr.bench [--quick] [--out DIR] [hydra overrides]``.

``python -m joint_colsr.bench --gpu-check`` (``make gpu-check``) is the ~8-minute check of one
GPU instead: :mod:`joint_colsr.bench.gpu_check`.

Writes ``DIR/results.json`` (read-modify-write: only this suite's keys are replaced) and
``DIR/RESULTS.md``. Sections (``--sections``):

* ``models``: every ``conf/model/*.yaml``: training and inference images/s at a few batch
  sizes, FLOPs per image (torch's FlopCounterMode) and the FLOP/s achieved;
* ``lightning``: our Lightning training vs a raw PyTorch loop (``lightning_vs_raw_loop``);
* ``fast_paths``: bf16-mixed, channels_last, torch.compile, each alone and all together;
* ``projection``: the paper's schedule (118,287 images x 148 epochs) at the measured rate,
  data loading included;
* ``data``: the data paths (``data_cache_vs_naive``, from ``joint_colsr.bench.data``) and the
  cache loader at COCO scale against memcpy (``loader_cache_images_per_s``,
  ``loader_vs_memcpy``, from ``joint_colsr.bench.loader``);
* ``coco_startup``: seconds and peak memory of a COCO start on a synthetic full-scale layout,
  first (parsing the annotations) and second (their compact index), from
  ``joint_colsr.bench.coco_startup`` (``coco_second_start_seconds``).

Runs on the GPU when there is one (``trainer=gpu``) and on the CPU otherwise, with
settings sized for each (``--quick``: tiny widths and one or two steps, to check that
everything runs). Positional arguments are Hydra overrides applied to every config.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--gpu-check" in sys.argv[1:]:
    # Before the imports below: on a GPU node without the suite's dependencies the check still
    # says in one line what is missing (or that there is no GPU).
    from joint_colsr.bench.gpu_check import main as _gpu_check

    raise SystemExit(_gpu_check(sys.argv[1:]))

import argparse
import datetime as dt
import inspect
import logging
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import lightning
import torch

from joint_colsr.assembly import build_system
from joint_colsr.bench import merge_results, replace_report_section
from joint_colsr.bench.loop import compare_lightning_raw, make_uint8_batches, self_log_cost
from joint_colsr.bench.models import (
    FAST_PATHS,
    PAPER_EPOCHS,
    PAPER_TRAIN_IMAGES,
    benchmark_fast_paths,
    benchmark_variants,
    compose_train_config,
    model_names,
    project_paper_schedule,
)

log = logging.getLogger("joint_colsr.bench")

SECTIONS = ("models", "lightning", "fast_paths", "projection", "data", "coco_startup")
#: The keys of results.json this suite writes. The data, loader and COCO start-up benchmarks
#: write their own (``data_cache_vs_naive``, ``data_pipeline``; ``loader_cache_images_per_s``,
#: ``loader_vs_memcpy``, ``loader_cache``; ``coco_startup`` ...) and their own sections of RESULTS.md.
OWN_KEYS = (
    "machine", "bench_settings", "models", "lightning_vs_raw_loop", "lightning_vs_raw_loop_detail",
    "lightning_self_log_call_ms", "fast_paths", "paper_schedule",
)
#: Markers of this suite's part of RESULTS.md (other writers keep theirs).
REPORT_BEGIN = "<!-- BEGIN model benchmark (python -m joint_colsr.bench) -->"
REPORT_END = "<!-- END model benchmark -->"

#: Settings per device. CPU ones keep `make bench` near 10 minutes on a 2-core VM.
SETTINGS: dict[str, dict[str, Any]] = {
    "cuda": {
        "width_mult": 1.0, "batch_sizes": [32, 160, 256], "warmup": 5, "steps": 20, "max_seconds": 30.0,
        "lightning": {"width_mult": 1.0, "batch_size": 160, "warmup": 5, "steps": 30, "repeats": 5},
        "lightning_small_steps": {"width_mult": 0.0625, "batch_size": 16, "warmup": 5, "steps": 30, "repeats": 5},
        "fast_paths": {"width_mult": 1.0, "batch_size": 160, "warmup": 5, "steps": 20, "repeats": 3},
        "projection": {"width_mult": 1.0, "batch_size": 160, "warmup": 5, "steps": 40},  # warm-up raised past the prefetch depth
    },
    "cpu": {
        "width_mult": 0.25, "batch_sizes": [2, 8], "warmup": 1, "steps": 3, "max_seconds": 10.0,
        "lightning": {"width_mult": 0.25, "batch_size": 8, "warmup": 2, "steps": 10, "repeats": 5},
        "lightning_small_steps": {"width_mult": 0.0625, "batch_size": 2, "warmup": 2, "steps": 20, "repeats": 5},
        "fast_paths": {"width_mult": 0.25, "batch_size": 8, "warmup": 2, "steps": 6, "repeats": 3},
        "projection": {"width_mult": 1.0, "batch_size": 8, "warmup": 1, "steps": 4},
    },
    "quick": {
        "width_mult": 0.0625, "batch_sizes": [2], "warmup": 1, "steps": 1, "max_seconds": 5.0,
        "lightning": {"width_mult": 0.0625, "batch_size": 2, "warmup": 1, "steps": 5, "repeats": 2},
        "lightning_small_steps": None,
        "fast_paths": {"width_mult": 0.0625, "batch_size": 2, "warmup": 1, "steps": 1, "repeats": 1,
                       "skip": {"compile": "--quick (compiling takes minutes on a CPU)", "all": "--quick (compiling takes minutes on a CPU)"}},
        "projection": {"width_mult": 0.0625, "batch_size": 2, "warmup": 1, "steps": 1},
    },
}


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu_model = platform.processor() or platform.machine()
    vector_flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model == (platform.processor() or platform.machine()):
                cpu_model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not vector_flags:
                # What decides CPU bf16 speed: without avx512_bf16 / amx_bf16 it is emulated.
                vector_flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in line.split()]
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "cpu_cores": os.cpu_count(),
        "cpu_vector_flags": vector_flags,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def run_data_section(quick: bool, device: str, out_dir: Path) -> str:
    """Run the data benchmark (``joint_colsr.bench.data``) if it is installed; it writes its
    own keys and RESULTS.md section into ``out_dir``. Returns what happened, in words."""
    try:
        from joint_colsr.bench import data as data_bench
    except ImportError as err:
        return f"not available: joint_colsr.bench.data could not be imported ({err})"
    offered = {"quick": quick, "device": device}
    params = inspect.signature(data_bench.run_data_benchmark).parameters
    try:
        result = data_bench.run_data_benchmark(**{k: v for k, v in offered.items() if k in params})
        data_bench.write_results(result, out_dir)
    except Exception as err:  # the other sections' numbers must still be written
        log.exception("data benchmark failed")
        return f"failed: {type(err).__name__}: {err}"
    said = f"ran: data_cache_vs_naive = {result.get('data_cache_vs_naive')}"
    try:  # the cache loader at COCO scale (joint_colsr.bench.loader): its own keys and section
        from joint_colsr.bench import loader as loader_bench

        loader = loader_bench.run_loader_benchmark(quick=quick)
        loader_bench.write_results(loader, out_dir)
    except Exception as err:
        log.exception("loader benchmark failed")
        return f"{said}; loader benchmark failed: {type(err).__name__}: {err}"
    return f"{said}; loader_cache_images_per_s = {loader['loader_cache_images_per_s']}, loader_vs_memcpy = {loader['loader_vs_memcpy']}"


def run_coco_startup_section(quick: bool, out_dir: Path) -> str:
    """Run the COCO start-up benchmark (``joint_colsr.bench.coco_startup``); it writes its own
    keys and RESULTS.md section into ``out_dir``. Returns what happened, in words."""
    from joint_colsr.bench import coco_startup

    try:
        result = coco_startup.run_coco_startup_benchmark(quick=quick)
        coco_startup.write_results(result, out_dir)
    except Exception as err:  # the other sections' numbers must still be written
        log.exception("COCO start-up benchmark failed")
        return f"failed: {type(err).__name__}: {err}"
    return (f"ran: coco_second_start_seconds = {result['coco_second_start_seconds']}, "
            f"coco_second_start_peak_gib = {result['coco_second_start_peak_gib']}")


def _timed(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    start = time.perf_counter()
    log.info("== %s", name)
    out = fn(*args, **kwargs)
    log.info("== %s done in %.0f s", name, time.perf_counter() - start)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    threads = args.threads if args.threads is not None else (1 if device == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)
    settings = SETTINGS["quick" if args.quick else device]
    overrides = [f"trainer={'gpu' if device == 'cuda' else 'cpu'}", "data.val_views=1", *args.overrides]
    if device == "cpu":
        overrides.append("data.num_workers=0" if args.quick else "data.num_workers=2")
    elif not any(o.startswith("data.num_workers=") for o in args.overrides):
        overrides.append(f"data.num_workers={min(os.cpu_count() or 1, 16)}")
    sections = args.sections or list(SECTIONS)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "bench_settings": {"device": device, "torch_threads": torch.get_num_threads(), "quick": args.quick, "overrides": overrides, "sections": sections, **settings},
    }
    started = time.perf_counter()
    results["bench_settings"]["run_started_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
    if "models" in sections:
        names = args.models or model_names()
        results["models"] = _timed(
            "models", benchmark_variants, names, overrides, settings["width_mult"], settings["batch_sizes"],
            settings["warmup"], settings["steps"], settings["max_seconds"],
        )
    if "lightning" in sections:
        detail: dict[str, Any] = {}
        for label in ("lightning", "lightning_small_steps"):
            s = settings[label]
            if s is None:
                continue
            cfg = compose_train_config(["model=joint_paper", *overrides], s["width_mult"])
            batches = make_uint8_batches(cfg, s["batch_size"], 2)
            detail[label] = _timed(label, compare_lightning_raw, cfg, batches, s["warmup"], s["steps"], s["repeats"])
            detail[label]["width_mult"] = s["width_mult"]
        # What one self.log call costs: the training step logs train/loss every step.
        results["lightning_self_log_call_ms"] = 1000 * self_log_cost(cfg, build_system(cfg), batches)
        results["lightning_vs_raw_loop"] = detail["lightning"]["ratio"]
        results["lightning_vs_raw_loop_detail"] = detail
    if "fast_paths" in sections:
        s = settings["fast_paths"]
        skip = s.get("skip", {})
        paths = [p for p in FAST_PATHS if p not in skip]
        results["fast_paths"] = _timed(
            "fast_paths", benchmark_fast_paths, overrides, s["width_mult"], s["batch_size"], s["warmup"], s["steps"], s["repeats"], paths,
        )
        for p in FAST_PATHS:
            if p in skip:
                results["fast_paths"]["options"][p] = {"overrides": FAST_PATHS[p], "skipped": skip[p]}
    if "projection" in sections:
        s = settings["projection"]
        results["paper_schedule"] = _timed(
            "projection", project_paper_schedule, overrides, s["batch_size"], s["warmup"], s["steps"], s["width_mult"],
        )
        results["paper_schedule"].update(images=PAPER_TRAIN_IMAGES, epochs=PAPER_EPOCHS)
    if "data" in sections:
        results["bench_settings"]["data_benchmark"] = _timed("data", run_data_section, args.quick, device, args.out)
    if "coco_startup" in sections:
        results["bench_settings"]["coco_startup_benchmark"] = _timed("coco_startup", run_coco_startup_section, args.quick, args.out)
    # When and where each section was measured: a later partial run (--sections) replaces
    # only its own sections, and RESULTS.md says which numbers are older.
    where = results["machine"].get("gpu") or f"cpu ({results['machine'].get('cpu_model')})"
    stamp = {"date_utc": results["machine"]["date_utc"], "run": results["bench_settings"]["run_started_utc"],
             "device": device, "machine": where, "quick": args.quick}
    results["section_runs"] = {section: stamp for section in sections}
    results["bench_settings"]["wall_seconds"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def write_results(results: dict[str, Any], out_dir: Path) -> Path:
    """Merge this run's keys into ``out_dir/results.json`` (a section not run this time keeps
    its previous numbers; other writers' keys stay) and replace this suite's part of
    ``RESULTS.md``, leaving other writers' parts as they are."""
    merged = merge_results(out_dir, results)
    replace_report_section(out_dir, REPORT_BEGIN, REPORT_END, render_markdown(merged), at_top=True)
    return out_dir / "results.json"


# -- RESULTS.md ----------------------------------------------------------------------------


def _num(value: Any, digits: int = 2) -> str:
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return "-"


def render_markdown(results: dict[str, Any]) -> str:
    """``RESULTS.md``: the numbers of ``results.json`` in tables, with the machine named."""
    m, st = results.get("machine", {}), results.get("bench_settings", {})
    device = st.get("device", "?")
    out = ["Written by `make bench` (`python -m joint_colsr.bench`) from `benchmarks/results.json`; "
           "every number in this part is in that file.", ""]
    cpu = f"{m.get('cpu_model')}, {m.get('cpu_cores')} cores (flags: {', '.join(m.get('cpu_vector_flags') or []) or '-'})"
    where = f"GPU {m['gpu']}; CPU {cpu}" if m.get("gpu") else f"CPU only: {cpu}"
    out += [f"- Machine: {where}; torch {m.get('torch')}, Lightning {m.get('lightning')}, Python {m.get('python')}; {m.get('date_utc')} UTC.",
            f"- Device measured: **{device}** ({st.get('torch_threads')} torch thread(s)){' (quick mode: tiny widths, 1-2 steps; the numbers mean nothing)' if st.get('quick') else ''}; "
            f"overrides `{' '.join(st.get('overrides', []))}`; the whole run took {_num(st.get('wall_seconds'), 0)} s."]
    if device == "cpu":
        out.append("- **No GPU was available for this run.** The same command measures on CUDA when one is present "
                   "(`trainer=gpu`: bf16-mixed, cuDNN autotuning; full width, batch sizes 32/160/256).")
    runs = results.get("section_runs") or {}
    older = {name: r for name, r in runs.items() if r.get("run") != st.get("run_started_utc")}
    if older:
        this = ", ".join(sorted(set(runs) - set(older))) or "-"
        out.append(f"- The last run measured: {this}. From earlier runs: "
                   + "; ".join(f"{name} ({r.get('date_utc')} UTC, {r.get('machine')}{', quick' if r.get('quick') else ''})" for name, r in sorted(older.items()))
                   + " (machine line above: the last run).")
    if "load_average_at_start" in m:
        out.append(f"- Load average at start / end: {m.get('load_average_at_start')} / {m.get('load_average_at_end')} "
                   "(a shared VM: other jobs ran alongside; `spread` = (max - min) / median of the repeats says how much the numbers moved).")
    out.append("")

    ps = results.get("paper_schedule")
    if ps:
        out += ["## The paper's schedule", "",
                f"`joint_paper` (width {ps.get('width_mult')}), batch {ps.get('batch_size')}, {ps.get('precision')}, trained by Lightning on the " +
                (f"`{ps.get('data')}` photos through the decoded-image cache (`data.cache`, the paper recipe's data path; two gathering threads, no loader workers; loading included): "
                 if ps.get("data_cache") else f"`{ps.get('data')}` data module with {ps.get('num_workers')} loader workers (photo decoding included): ") +
                f"**{_num(ps['train']['images_per_s'], 1)} images/s** (spread {_num(ps['train']['spread'])}). "
                f"{PAPER_TRAIN_IMAGES:,} images x {PAPER_EPOCHS} epochs at that rate: **{_num(ps.get('projected_hours'), 1)} hours** "
                f"(target: 0.5 hours = {_num(ps.get('target_images_per_s'), 0)} images/s on one H100).", ""]

    lr = results.get("lightning_vs_raw_loop_detail")
    if lr:
        out += ["## Lightning training step vs a raw PyTorch loop", "",
                f"`lightning_vs_raw_loop` = **{_num(results.get('lightning_vs_raw_loop'), 3)}** (our time / raw time; target <= 1.03). "
                "Same network, optimizer and pre-made batches; LAB conversion on both sides; Lightning runs with the default "
                "callbacks, CSV logger and progress bar, as `train` does. Repeats alternate the two; each side's time is the "
                "median over blocks of 5 consecutive steps (the logging and progress-bar period). The ratio uses the "
                "`clock` column: on a GPU the wall clock; on a CPU this process's CPU time, which other jobs on a shared "
                "machine disturb far less than the wall clock (both are given).", "",
                "| setting | width | batch | clock | ratio | ratio (wall) | ratio (CPU time) | ratio per repeat | Lightning s/step (wall) | raw s/step (wall) | overhead ms/step |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for label, d in lr.items():
            key = "cpu_seconds_per_step" if d.get("clock") == "cpu" else "seconds_per_step"
            overhead = 1000 * (d["lightning"][key] - d["raw_loop"][key])
            out.append(f"| {label} | {d.get('width_mult')} | {d['batch_size']} | {d.get('clock')} | **{_num(d['ratio'], 3)}** | "
                       f"{_num(d.get('ratio_wall'), 3)} | {_num(d.get('ratio_cpu'), 3)} | {', '.join(_num(r, 2) for r in d['ratio_per_repeat'])} | "
                       f"{_num(d['lightning']['seconds_per_step'], 4)} | {_num(d['raw_loop']['seconds_per_step'], 4)} | {_num(overhead, 1)} |")
        out.append("")
        if "lightning_self_log_call_ms" in results:
            out += [f"One `self.log(name, tensor)` call inside a training step costs {_num(results['lightning_self_log_call_ms'], 2)} ms of CPU "
                    "here (`lightning_self_log_call_ms`: Lightning moves the logged metric's state to the device on every call); "
                    "`ColSRSystem.training_step` makes one per step (`train/loss`; `data/skipped` is summed on the device and logged once per epoch).", ""]

    fp = results.get("fast_paths")
    if fp:
        out += ["## Fast paths (training, `joint_paper`)", "",
                f"Width {fp.get('width_mult')}, batch {fp.get('batch_size')}, {fp.get('steps_per_repeat')} timed steps x {fp.get('repeats')} rounds "
                f"(options interleaved). Each is a config option of `train`. Speed-up on the `{fp.get('clock')}` clock "
                "(CPU time on a CPU, as above); s/step and images/s are wall clock.", "",
                "| option | overrides | s/step | images/s | speed-up vs baseline | spread | first fit s (incl. compiling) |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        order = list(FAST_PATHS)
        for name, e in sorted(fp.get("options", {}).items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)):
            over = " ".join(f"`{o}`" for o in e.get("overrides", []))
            if "seconds_per_step" in e:
                out.append(f"| {name} | {over} | {_num(e['seconds_per_step'], 4)} | {_num(e['images_per_s'], 1)} | "
                           f"{_num(e.get('speedup_vs_baseline'))}x | {_num(e['spread'])} | {_num(e.get('first_fit_seconds'), 1)} |")
            else:
                out.append(f"| {name} | {over} | {e.get('error') or e.get('skipped')} | | | | |")
        out.append("")

    models = results.get("models")
    if models:
        width = st.get("width_mult")
        out += ["## Model variants", "",
                f"Every `conf/model/*.yaml`, networks at width_mult {width}, {st.get('steps')} timed steps after {st.get('warmup')} warm-up "
                "(fewer when a measurement passes its time cap). Training = `Trainer.fit` with the variant's own training step on "
                "pre-made batches (no photo decoding); inference = `ColSRSystem.infer` in inference mode. FLOPs: torch's "
                "FlopCounterMode (convolutions and matmuls); training step = forward + backward of everything the step trains.", "",
                "| model | params | forward GFLOP/img | train step GFLOP/img | batch | train img/s | train GFLOP/s | inference img/s | inference GFLOP/s |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in models.items():
            if "error" in r:
                out.append(f"| {name} | failed: {r['error'][:120]} | | | | | | | |")
                continue
            fwd, trn = r.get("forward_flops_per_image"), r.get("train_step_flops_per_image")
            for bs, b in r.get("batch_sizes", {}).items():
                if "error" in b:
                    out.append(f"| {name} | {r['params']:,} | {_num(fwd / 1e9 if fwd else None, 3)} | {_num(trn / 1e9 if trn else None, 3)} | {bs} | "
                               f"{b['error']} | | | |")
                    continue
                out.append(f"| {name} | {r['params']:,} | {_num(fwd / 1e9 if fwd else None, 3)} | {_num(trn / 1e9 if trn else None, 3)} | {bs} | "
                           f"{_num(b['train']['images_per_s'], 1)} | {_num(b['train']['achieved_flop_per_s'] / 1e9, 1)} | "
                           f"{_num(b['inference']['images_per_s'], 1)} | {_num(b['inference']['achieved_flop_per_s'] / 1e9, 1)} |")
        out.append("")

    if st.get("data_benchmark"):
        out += [f"Data benchmark in this run: {st['data_benchmark']} (its own section, when it ran, is below).", ""]
    if st.get("coco_startup_benchmark"):
        out += [f"COCO start-up benchmark in this run: {st['coco_startup_benchmark']} (its own section is below).", ""]

    out += ["## Reproduce", "", "```bash", "make bench                                   # everything; GPU if there is one",
            "python -m joint_colsr.bench --sections lightning fast_paths   # a part", "python -m joint_colsr.bench --quick --out /tmp/b   # does it run? (seconds)",
            "```", ""]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m joint_colsr.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every config (e.g. data.num_workers=8)")
    parser.add_argument("--quick", action="store_true", help="tiny widths, 1-2 steps: checks that everything runs (numbers mean nothing)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"), help="folder of results.json and RESULTS.md")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, help=f"run only these (default: all of {', '.join(SECTIONS)})")
    parser.add_argument("--models", nargs="+", help="model configs to measure (default: every conf/model/*.yaml)")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads (default on a CPU run: 1, because on a shared, oversubscribed VM multi-threaded "
        "timings swing by several times; pass the core count on a machine of your own)",
    )
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even when a GPU is available")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Lightning's per-fit chatter (GPU available..., model summary) would bury the results.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    path = write_results(run(args), args.out)
    print(f"wrote {path} and {path.with_name('RESULTS.md')}")


if __name__ == "__main__":
    sys.exit(main())
