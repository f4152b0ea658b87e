"""Model benchmarks: every ``conf/model/*.yaml`` variant's speed and FLOPs, the fast paths, and
the projection of the paper's schedule.

Every measurement trains through the same run assembly (:mod:`joint_colsr.assembly`) as ``python -m joint_colsr.train``
(config composed with Hydra's compose API), so what is measured is what users run, and
every switch measured here is a config key they can set.
"""

from __future__ import annotations

import gc
import logging
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, open_dict
from torch.utils.flop_counter import FlopCounterMode

from joint_colsr import CONFIG_DIR
from joint_colsr.assembly import build_datamodule, build_system
from joint_colsr.bench.loop import (
    _autocast,
    accelerator_device,
    lightning_fit_timed,
    make_uint8_batches,
    step_clock,
    StepStamps,
    summarize,
)
from joint_colsr.run.config_checks import check_config
from joint_colsr.data import build_cache
from joint_colsr.nets import count_parameters

log = logging.getLogger(__name__)

CONF_DIR = Path(CONFIG_DIR)

#: The paper's schedule (Section III): COCO train2017 images x epochs.
PAPER_TRAIN_IMAGES = 118_287
PAPER_EPOCHS = 148

#: The fast paths: name -> config overrides (all of them are training options).
FAST_PATHS: dict[str, list[str]] = {
    "baseline": ["trainer.precision=32-true"],
    "bf16-mixed": ["trainer.precision=bf16-mixed"],
    "channels_last": ["trainer.precision=32-true", "speed.channels_last=true"],
    "compile": ["trainer.precision=32-true", "speed.compile=true"],
    # The NaN/Inf guard read back every 5 steps (with the logged loss) instead of every step.
    "deferred_nan_check": ["trainer.precision=32-true", "callbacks.stop_on_non_finite.check_every_n_steps=5"],
    "all": ["trainer.precision=bf16-mixed", "speed.channels_last=true", "speed.compile=true",
            "callbacks.stop_on_non_finite.check_every_n_steps=5"],
}


def compose_train_config(overrides: Sequence[str], width_mult: float | None = None) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, as the command line would compose it.

    ``width_mult`` (if given) replaces every ``width_mult`` key under ``model`` (a variant
    made of several networks has one per network).
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = "."  # replaced by a temporary folder for every fit
        if width_mult is not None:
            _set_every(cfg.model, "width_mult", width_mult)
    check_config(cfg)
    return cfg


def _set_every(node: Any, key: str, value: Any) -> None:
    if isinstance(node, DictConfig):
        for k in list(node.keys()):
            if k == key:
                node[k] = value
            else:
                _set_every(node[k], key, value)
    elif isinstance(node, ListConfig):
        for item in node:
            _set_every(item, key, value)


def model_names() -> list[str]:
    """Every model variant in ``conf/model`` (new files are picked up automatically)."""
    return sorted(p.stem for p in CONF_DIR.joinpath("model").glob("*.yaml"))


def lab_batches(cfg: DictConfig, uint8_batches: Sequence[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """The network's inputs and targets, made on ``device`` as training makes them."""
    convert = build_datamodule(cfg).on_after_batch_transfer
    return [convert({k: v.to(device) for k, v in b.items()}, 0) for b in uint8_batches]


def inference_timed(system: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], precision: str, warmup: int, steps: int, max_seconds: float | None) -> list[float]:
    """Seconds of each ``system.infer`` call on the batches (eval mode, inference mode)."""
    device = batches[0]["l_lowres"].device
    system.to(device).eval()
    clock = StepStamps(device)  # CUDA events on a GPU: no wait inside the timed calls
    with torch.inference_mode(), _autocast(precision, device):
        for index in range(warmup + steps + 1):
            if index >= warmup:
                clock.stamp()
                wall = clock.wall
                if len(wall) > steps or (max_seconds is not None and len(wall) >= 2 and wall[-1] - wall[0] >= max_seconds):
                    break
            system.infer(batches[index % len(batches)])
    return clock.seconds()


def inference_flops_per_image(system: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """FLOPs of one forward pass per image (torch's FlopCounterMode: convolutions and matmuls)."""
    system.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        system.infer(batch)
    return counter.get_total_flops() / batch["l_lowres"].shape[0]


def benchmark_variant(name: str, overrides: Sequence[str], width_mult: float | None, batch_sizes: Sequence[int], warmup: int, steps: int, max_seconds: float) -> dict[str, Any]:
    """Training and inference images/s of one model config at several batch sizes, its FLOPs
    per image and the FLOP/s achieved. Training is ``Trainer.fit`` with the variant's own
    training step on pre-made batches (data decoding excluded)."""
    cfg = compose_train_config([f"model={name}", *overrides], width_mult)
    device = accelerator_device(str(cfg.trainer.accelerator))
    precision = str(cfg.trainer.precision)
    torch.manual_seed(0)
    system = build_system(cfg)
    result: dict[str, Any] = {
        "params": count_parameters(system),
        "width_mult": width_mult,
        "precision": precision,
        "batch_sizes": {},
    }
    for batch_size in batch_sizes:
        out_of_memory = False
        try:
            result["batch_sizes"][str(batch_size)] = _measure_batch_size(cfg, system, result, device, precision, batch_size, warmup, steps, max_seconds)
        except torch.OutOfMemoryError:
            # Keep the smaller batch sizes' numbers; larger ones would not fit either.
            log.warning("model=%s: out of device memory at batch %d; larger batch sizes skipped", name, batch_size)
            result["batch_sizes"][str(batch_size)] = {"error": f"out of memory at batch {batch_size}"}
            out_of_memory = True
        if out_of_memory:  # outside the except block: the traceback no longer holds the tensors
            free_device_memory()
            break
    return result


def _measure_batch_size(cfg: DictConfig, system: torch.nn.Module, result: dict[str, Any], device: torch.device, precision: str,
                        batch_size: int, warmup: int, steps: int, max_seconds: float) -> dict[str, Any]:
    uint8 = make_uint8_batches(cfg, batch_size, 2)
    timer = lightning_fit_timed(cfg, system, warmup, steps, batches=uint8, max_seconds=max_seconds, count_flops=True)
    train = summarize(timer.step_seconds, batch_size)
    train_flops = timer.flops_per_image
    lab = lab_batches(cfg, uint8, device)
    if "forward_flops_per_image" not in result:
        result["forward_flops_per_image"] = inference_flops_per_image(system, lab[0])
        result["train_step_flops_per_image"] = train_flops
    infer = summarize(inference_timed(system, lab, precision, warmup, steps, max_seconds), batch_size)
    train["achieved_flop_per_s"] = (train_flops or 0.0) * train["images_per_s"]
    infer["achieved_flop_per_s"] = result["forward_flops_per_image"] * infer["images_per_s"]
    return {"train": train, "inference": infer}


def free_device_memory() -> None:
    """Drop what a failed measurement left on the GPU, so the next one starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def benchmark_variants(names: Sequence[str], overrides: Sequence[str], width_mult: float | None, batch_sizes: Sequence[int], warmup: int, steps: int, max_seconds: float) -> dict[str, Any]:
    """:func:`benchmark_variant` for each name; a variant that fails is recorded with its error."""
    results: dict[str, Any] = {}
    for name in names:
        log.info("benchmarking model=%s", name)
        try:
            results[name] = benchmark_variant(name, overrides, width_mult, batch_sizes, warmup, steps, max_seconds)
        except Exception as err:  # one broken variant must not lose the others' numbers
            log.error("model=%s failed: %s", name, err)
            results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=3)}
        free_device_memory()  # each variant starts with the device's memory free
    return results


def benchmark_fast_paths(overrides: Sequence[str], width_mult: float | None, batch_size: int, warmup: int, steps: int, repeats: int, paths: Sequence[str] | None = None) -> dict[str, Any]:
    """Training speed of ``joint_paper`` with each fast path on, against the baseline.

    One system per option, trained in ``repeats`` rounds that visit the options in turn
    (rotating the order each round), so machine noise hits every option alike.
    ``speedup_vs_baseline`` uses the clock :func:`~joint_colsr.bench.loop.step_clock` picks
    (CPU time on a CPU, wall time on a GPU). The first
    round's warm-up steps include ``torch.compile``'s compilation; ``first_fit_seconds``
    shows what that costs.
    """
    names = list(paths or FAST_PATHS)
    configs = {n: compose_train_config(["model=joint_paper", *overrides, *FAST_PATHS[n]], width_mult) for n in names}
    uint8 = make_uint8_batches(configs[names[0]], batch_size, 2)
    clock = step_clock(accelerator_device(str(configs[names[0]].trainer.accelerator)))
    systems, seconds, cpu_seconds, first_fit, errors = {}, {n: [] for n in names}, {n: [] for n in names}, {}, {}
    for n in names:
        torch.manual_seed(0)
        systems[n] = build_system(configs[n])
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]
        for n in order:
            if n in errors:
                continue
            start = time.perf_counter()
            try:
                timer = lightning_fit_timed(configs[n], systems[n], warmup, steps, batches=uint8)
            except Exception as err:  # e.g. no C compiler for torch.compile: record, keep the rest
                log.error("fast path %s failed: %s", n, err)
                errors[n] = f"{type(err).__name__}: {err}"
                continue
            first_fit.setdefault(n, time.perf_counter() - start)
            seconds[n].append(statistics.fmean(timer.step_seconds))
            cpu_seconds[n].append(statistics.fmean(timer.step_cpu_seconds))
    result: dict[str, Any] = {"clock": clock, "width_mult": width_mult, "batch_size": batch_size, "warmup_steps": warmup, "steps_per_repeat": steps, "repeats": repeats, "options": {}}
    on_clock = seconds if clock == "wall" else cpu_seconds
    base = statistics.median(on_clock["baseline"]) if on_clock.get("baseline") else None
    for n in names:
        entry: dict[str, Any] = {"overrides": FAST_PATHS[n]}
        if n in errors:
            entry["error"] = errors[n]
        else:
            entry.update(summarize(seconds[n], batch_size))
            entry["cpu_seconds_per_step"] = statistics.median(cpu_seconds[n])
            entry["first_fit_seconds"] = first_fit[n]
            if base:
                entry["speedup_vs_baseline"] = base / statistics.median(on_clock[n])
        result["options"][n] = entry
    return result


def project_paper_schedule(
    overrides: Sequence[str], batch_size: int, warmup: int, steps: int, width_mult: float = 1.0, use_cache: bool = True,
) -> dict[str, Any]:
    """``joint_paper`` (full width unless ``width_mult`` says otherwise) trained on the
    configured data module, data loading included, and the wall time the paper's schedule
    would take at that rate.

    With ``use_cache`` (the default) the photos are first decoded into a decoded-image cache
    (``data.cache``), the data path the paper recipe uses on COCO (``experiment=paper
    data.cache=DIR``); otherwise ``data.num_workers`` workers decode and crop photos.
    """
    cfg = compose_train_config(["model=joint_paper", *overrides, f"data.batch_size={batch_size}"], width_mult)
    # Steady state: the loaders' workers prefetch 2 batches each before the first step, so a
    # warm-up shorter than that times batches that were ready in advance.
    warmup = max(warmup, 2 * int(cfg.data.num_workers) + 4)
    torch.manual_seed(0)
    system = build_system(cfg)
    with tempfile.TemporaryDirectory(prefix="joint_colsr_bench_cache_") as tmp:
        if use_cache:
            cache_dir = Path(tmp) / "cache"
            build_cache(instantiate(cfg.data.source), cache_dir, output_size=int(cfg.data.output_size),
                        val_views=int(cfg.data.val_views), progress=False)
            with open_dict(cfg):
                cfg.data.cache = str(cache_dir)
        timer = lightning_fit_timed(cfg, system, warmup, steps)
    rate = summarize(timer.step_seconds, batch_size)
    total_images = PAPER_TRAIN_IMAGES * PAPER_EPOCHS
    seconds = total_images / rate["images_per_s"]
    return {
        "width_mult": cfg.model.net.width_mult,
        "batch_size": batch_size,
        "precision": str(cfg.trainer.precision),
        "data": str(cfg.data.source._target_).rsplit(".", 1)[-1],
        "data_cache": use_cache,
        "num_workers": cfg.data.num_workers,
        "train": rate,
        "paper_images": total_images,
        "projected_hours": seconds / 3600,
        "target_hours": 0.5,
        "target_images_per_s": total_images / 1800,
    }
