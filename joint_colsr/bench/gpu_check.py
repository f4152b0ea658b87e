"""``make gpu-check`` (``python -m joint_colsr.bench --gpu-check``): what one GPU gives the paper recipe, in ~8 minutes.

Writes ``benchmarks/gpu-check.json`` and the "GPU check" section of ``benchmarks/RESULTS.md``:

* the device, torch / CUDA / cuDNN versions, and the device's two ceilings measured here: a
  bf16 matrix product's FLOP/s and a device-to-device copy's bytes/s (read + written);
* the paper recipe (``experiment=paper``: its callbacks, bf16-mixed, cuDNN autotuning) trained
  from a synthetic decoded-image cache that this command writes (COCO's 256x256 uint8 layout,
  enough images that no timed step reads one twice; ``--cache-images 118287`` for COCO's
  count), data loading included, at batch 160 and 256, with and without
  ``speed.channels_last`` + ``speed.compile``. Timing: CUDA events at the starts of blocks of
  steps after a warm-up longer than the loaders' prefetch depth, one synchronization after
  the last step (none inside the timed steps). Reported: images/s, FLOP/s against the
  measured matrix peak, the memory-traffic roof (measured copy bandwidth over the bytes an
  unfused step moves per image), peak memory, and host syncs per step between logging
  steps (CUDA's sync debug mode, counted);
* the same recipe with random crops (``data.train_crop=random_resized``, cropped and resized
  on the device) from a 320-pixel synthetic cache, batch 160, eager;
* on a node with 2 or more GPUs, the paper recipe under DDP over all of them
  (``trainer=ddp``, batch 160 per GPU, eager), launched as ``python -m joint_colsr.train`` as
  users run it (Lightning starts one process per GPU); each rank times its blocks of steps
  and counts its syncs (:func:`step_timer`), and the report gives the node's images/s, the
  scaling against one GPU, and syncs per step on every rank;
* the EMA average's device against the model's, a 2-epoch smoke run's metrics (the default
  recipe on the embedded photos, ``trainer=gpu``), and determinism: two seeded
  ``trainer.deterministic=true`` runs give equal weights.

The synthetic cache is written under ``--work-dir`` (default ``outputs/gpu_check``; about 7 GB
at the default size, checked against that disk's free space before writing) and removed at
the end. Each part runs only while the budget (``--budget-s``, default 480) allows; a skipped part says so.
Without a CUDA GPU it prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

log = logging.getLogger("joint_colsr.bench.gpu_check")

BEGIN = "<!-- BEGIN gpu check (python -m joint_colsr.bench --gpu-check) -->"
END = "<!-- END gpu check -->"
NO_GPU_EXIT = 2
#: Paper recipe runs: (batch size, channels_last + compile).
RUNS = ((160, False), (256, False), (160, True), (256, True))
#: The random-crop run: batch 160, eager, from a cache of this side (``preprocess train_size=320``,
#: the documented route to crops), ``data.train_crop=random_resized`` cropped and resized on the device.
CROP_CACHE_SIZE = 320
CROP_OVERRIDES = ("data.train_crop=random_resized",)
#: The DDP run's batch per GPU (the paper's batch on each device), eager.
DDP_BATCH = 160
SYNC_WARNING = "synchronizing CUDA operation"


def no_gpu_message() -> str | None:
    """One line saying why there is no GPU to check, or ``None`` when CUDA is usable."""
    if torch.cuda.is_available():
        return None
    cuda = torch.version.cuda or "none (a CPU build)"
    return f"gpu-check: no CUDA GPU here (torch {torch.__version__}, CUDA {cuda}); run it on a GPU node"


# -- the data: a synthetic decoded-image cache -------------------------------------------------------------

#: Validation images of the synthetic cache.
VAL_IMAGES = 256


def synthetic_cache_bytes(train_images: int, val_images: int, size: int = 256, train_size: int | None = None) -> int:
    """The disk :func:`write_synthetic_cache` takes for these arguments: the uint8 images, plus
    5 % (index, shard headers)."""
    return int((train_images * (train_size or size) ** 2 + val_images * size**2) * 3 * 1.05)


def check_free_space(folder: Path, needed: int) -> None:
    """Create ``folder``; stop with one line if its file system has less than ``needed`` bytes free."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise SystemExit(f"gpu-check: the synthetic cache needs {needed / 1e9:.1f} GB in {folder}, which has "
                         f"{free / 1e9:.1f} GB free: pass --work-dir DIR on a larger disk, or fewer --cache-images")


def write_synthetic_cache(root: Path, train_images: int, val_images: int, size: int = 256, shard_size: int = 1024,
                          seed: int = 0, train_size: int | None = None) -> Path:
    """A decoded-image cache (:mod:`joint_colsr.data.cache` layout) of random-texture images.

    The bytes are what COCO's cache holds per image (``(3, size, size)`` uint8; training
    images ``train_size`` a side when given, as ``preprocess train_size=...`` writes them for
    random crops); only the content is synthetic (colour gradients plus noise, each image of
    a shard with its own colour offset; every shard holds the same images).
    Written directly, without decoding photos: gigabytes take seconds.
    """
    from joint_colsr.data.cache.build import write_index
    from joint_colsr.data.cache.store import CACHE_VERSION, COLOUR_HANDLING, sha256_of
    from joint_colsr.data.views import WHOLE

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_size = train_size or size
    sides = {"train": train_size, "val": size}
    index: dict[str, Any] = {
        "version": CACHE_VERSION,
        "source": {"type": "synthetic", "seed": seed},
        "output_size": size,
        "sizes": dict(sides),
        "val_views": [list(WHOLE)],
        "layout": "NCHW uint8 sRGB, synthetic",
        "colour": COLOUR_HANDLING,
        "filters": {"min_side": 16, "max_aspect": 10.0, "exclude_grayscale": True},
        "shard_size": shard_size,
        "splits": {},
        "categories": {},
    }
    # One shard's images per side, written under every shard's name: the files (and so the
    # reads and the page cache) are as large as a real cache's, at the cost of writing them.
    full = {side: _synthetic_shard(rng, side, shard_size) for side in set(sides.values())}
    digests: dict[tuple[int, int], str] = {}
    shards = []
    for name, count in (("train", train_images), ("val", val_images)):
        side = sides[name]
        for first in range(0, count, shard_size):
            n = min(shard_size, count - first)
            file_name = f"{name}-{first // shard_size:05d}.npy"
            np.save(root / file_name, full[side][:n])
            if (side, n) not in digests:
                digests[side, n] = sha256_of(root / file_name)
            keys = [f"{name}{i}" for i in range(first, first + n)]
            shards.append({"split": name, "file": file_name, "first_item": first, "num_items": n, "items_sha1": "synthetic", "count": n,
                           "bytes": (root / file_name).stat().st_size, "sha256": digests[side, n],
                           "keys": keys, "labels": [[] for _ in keys], "excluded": {}})
        index["splits"][name] = {"num_items": count}
    write_index(root, index, shards)
    return root


def _synthetic_shard(rng: np.random.Generator, side: int, count: int) -> np.ndarray:
    """``count`` synthetic ``(3, side, side)`` uint8 images: a pool of 32 textures (colour
    gradients plus noise), each image one of them plus its own colour offset (uint8 arithmetic)."""
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    base = rng.integers(0, 256, (32, 3, 1, 1)).astype(np.float32)
    tilt = rng.uniform(-120, 120, (32, 3, 2)).astype(np.float32)
    pool = base + tilt[..., :1, None] * ramp[None, None, :, None] + tilt[..., 1:, None] * ramp[None, None, None, :]
    pool = np.clip(pool + rng.integers(-24, 25, (32, 3, side, side)), 0, 255).astype(np.uint8)
    return pool[rng.integers(0, len(pool), count)] + rng.integers(0, 256, (count, 3, 1, 1), dtype=np.uint8)


# -- ceilings and per-image work -------------------------------------------------------------------------


def _event_seconds(fn: Callable[[], Any], warmup: int = 3, repeats: int = 10) -> float:
    """Mean seconds of ``fn`` on the device (CUDA events around ``repeats`` calls, after ``warmup``)."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / repeats


def device_ceilings() -> dict[str, float]:
    """bf16 matrix FLOP/s (8192^3 product, random data) and copy bytes/s (2 GiB, read + written)."""
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    matmul = _event_seconds(lambda: a @ b)
    src = torch.randn(2**29, device="cuda")  # 2 GiB of float32
    dst = torch.empty_like(src)
    copy_s = _event_seconds(lambda: dst.copy_(src))
    del a, b, src, dst
    torch.cuda.empty_cache()
    return {"bf16_matmul_tflops": 2 * n**3 / matmul / 1e12, "copy_gb_per_s": 2 * 2**31 / copy_s / 1e9}


def moves_bytes(func: Any) -> bool:
    """Whether an aten op reads or writes tensor memory: ``False`` for views (``view``, ``t``,
    ``expand``, ``slice``, ``detach`` ...: an output aliasing an input without writing it,
    by the op's schema), which only make new metadata."""
    schema = getattr(func, "_schema", None)
    if schema is None:
        return True
    if schema.name in _VIEWS_WITHOUT_ALIAS_INFO:
        return False
    return not any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


#: Views whose schema declares no alias (``_unsafe_view`` is ``view`` without the checks).
_VIEWS_WITHOUT_ALIAS_INFO = frozenset({"aten::_unsafe_view"})


def step_work_per_image(cfg: Any, batch_size: int = 8, device: str = "cuda") -> dict[str, float]:
    """FLOPs and unfused memory traffic of one bf16 training step (forward + backward), per image.

    FLOPs: torch's FlopCounterMode. Bytes: the tensor inputs and outputs of every aten op
    that moves bytes (:func:`moves_bytes`: views move none), summed: what an unfused step
    moves (torch.compile's fusion moves less).
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from joint_colsr.assembly import build_system

    class ByteCounter(TorchDispatchMode):
        bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not moves_bytes(func):
                return out
            for value in (*args, *(kwargs or {}).values(), *(out if isinstance(out, (tuple, list)) else (out,))):
                if isinstance(value, torch.Tensor):
                    ByteCounter.bytes += value.nbytes
            return out

    system = build_system(cfg).to(device).train()
    r, s = int(cfg.data.input_size), int(cfg.data.output_size)
    x = torch.rand(batch_size, 1, r, r, device=device) * 2 - 1
    target = torch.rand(batch_size, 2, s, s, device=device) - 0.5

    def step() -> None:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            out = system.net(x)
        out = out["ab"] if isinstance(out, dict) else out
        torch.nn.functional.mse_loss(out.float(), target).backward()

    step()  # cuDNN and allocator warm-up outside the counts
    with FlopCounterMode(display=False) as flops:
        step()
    ByteCounter.bytes = 0
    with ByteCounter():
        step()
    del system
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"flops": flops.get_total_flops() / batch_size, "bytes": ByteCounter.bytes / batch_size}


# -- the paper recipe, timed ------------------------------------------------------------------------------


class _EventBlocks:
    """CUDA events at the start of every ``block``-th training batch after ``warmup``, and at the end
    of the last one; read once, after training (no synchronization inside the timed steps)."""

    def __init__(self, warmup: int, steps: int, block: int) -> None:
        import lightning.pytorch as pl

        outer = self

        class Callback(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if batch_idx == warmup and torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                if batch_idx >= warmup and (batch_idx - warmup) % block == 0 and batch_idx < warmup + steps:
                    outer._record(batch_idx)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if batch_idx == warmup + steps - 1:
                    outer._record(batch_idx + 1)

        self.callback = Callback()
        self.events: list[tuple[int, torch.cuda.Event]] = []

    def _record(self, batch_idx: int) -> None:
        event = torch.cuda.Event(enable_timing=True) if torch.cuda.is_available() else _HostEvent()
        event.record()
        self.events.append((batch_idx, event))

    @staticmethod
    def mean_rate(rates: list[float], batch_size: int, steps: int, block: int) -> float | None:
        """Images/s over the ``steps`` timed steps (blocks of ``block``), None without blocks."""
        return batch_size * steps / sum(batch_size * block / r for r in rates) if rates else None

    def block_rates(self, batch_size: int) -> list[float]:
        self.events[-1][1].synchronize()
        return [batch_size * (b1 - b0) / (e0.elapsed_time(e1) / 1000)
                for (b0, e0), (b1, e1) in zip(self.events, self.events[1:])]


class _HostEvent:
    """``torch.cuda.Event``'s interface on the host clock, so that the check's code runs on a CPU too (tests)."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: "_HostEvent") -> float:
        return 1000 * (end.t - self.t)


class _SyncCounter:
    """CUDA's sync debug mode ("warn") over the training-loop iterations that must not sync
    (:class:`~joint_colsr.run.syncs.SyncDebug`: fetch, transfer, on_after_batch_transfer, step,
    hooks and logging; the batch's pinning too); ``batches``: how many ran checked."""

    def __init__(self) -> None:
        from joint_colsr.run.syncs import SyncDebug

        self.callback = SyncDebug("warn")

    @property
    def batches(self) -> int:
        return self.callback.checked_iterations


def paper_recipe_run(cache_dir: Path, batch_size: int, fast: bool, warmup: int, steps: int, block: int,
                     extra: Sequence[str] = ()) -> dict[str, Any]:
    """``experiment=paper`` from ``cache_dir``, ``warmup + steps`` training batches and one
    validation batch; images/s from CUDA events, peak memory, syncs per non-logging step."""
    from omegaconf import open_dict

    from joint_colsr.assembly import build_callbacks, build_datamodule, build_loggers, build_system, build_trainer
    from joint_colsr.bench.models import compose_train_config

    overrides = ["experiment=paper", f"data.cache={cache_dir}", f"data.batch_size={batch_size}", "logger=csv",
                 f"data.train_samples_per_epoch={batch_size * (warmup + steps)}", "trainer.max_epochs=1",
                 "+trainer.num_sanity_val_steps=0", "trainer.limit_val_batches=1",
                 *(["speed.channels_last=true", "speed.compile=true"] if fast else []), *extra]
    cfg = compose_train_config(overrides)
    timer, syncs = _EventBlocks(warmup, steps, block), _SyncCounter()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_dict(cfg):
            cfg.paths.output_dir = tmp
        system = build_system(cfg, startup_checks=True)
        callbacks = [*build_callbacks(cfg, system), timer.callback, syncs.callback]
        trainer = build_trainer(cfg, callbacks, build_loggers(cfg))
        trainer.fit(system, datamodule=build_datamodule(cfg))
    rates = timer.block_rates(batch_size)
    sync_count = sum(SYNC_WARNING in str(w.message) for w in caught)
    return {
        "batch_size": batch_size, "channels_last_compile": fast, "warmup_steps": warmup, "timed_steps": steps,
        "images_per_s": _EventBlocks.mean_rate(rates, batch_size, steps, block),
        "block_images_per_s": [round(r, 1) for r in rates],
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "syncs_per_step": sync_count / syncs.batches if syncs.batches else None,
        "sync_checked_steps": syncs.batches,
        "fit_seconds": time.perf_counter() - start,
    }


def step_timer(path: str, warmup: int, steps: int, block: int, batch_size: int) -> Any:
    """A Lightning callback for a run in another process (the DDP run): each rank times blocks
    of steps (:class:`_EventBlocks`) and counts CUDA's sync warnings between logging steps
    (:class:`_SyncCounter`), and writes ``{"rank", "world_size", "block_images_per_s",
    "images_per_s", "syncs_per_step", "sync_checked_steps", "peak_memory_gib"}`` to
    ``<path>.rank<N>.json`` when training ends (``images_per_s``: this rank's batches; the
    node's rate is the sum over ranks). Built by Hydra from ``+callbacks.gpu_check_timer``."""
    import lightning.pytorch as pl  # here: gpu-check's --help and its no-GPU exit need no Lightning

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.blocks, self.syncs = _EventBlocks(warmup, steps, block), _SyncCounter()
            self.caught: list[warnings.WarningMessage] = []

        def setup(self, trainer, pl_module, stage):  # its two helpers run as callbacks of this trainer
            trainer.callbacks.extend([self.blocks.callback, self.syncs.callback])

        def on_train_start(self, trainer, pl_module):
            self.recorder = warnings.catch_warnings(record=True)
            self.caught = self.recorder.__enter__()
            warnings.simplefilter("always")

        def on_train_end(self, trainer, pl_module):
            self.recorder.__exit__(None, None, None)
            rates = self.blocks.block_rates(batch_size)
            count = sum(SYNC_WARNING in str(w.message) for w in self.caught)
            result = {
                "rank": trainer.global_rank, "world_size": trainer.world_size, "block_images_per_s": [round(r, 1) for r in rates],
                "images_per_s": _EventBlocks.mean_rate(rates, batch_size, steps, block),
                "syncs_per_step": count / self.syncs.batches if self.syncs.batches else None,
                "sync_checked_steps": self.syncs.batches,
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            }
            Path(f"{path}.rank{trainer.global_rank}.json").write_text(json.dumps(result) + "\n")

    return Timer()


def ddp_run(cache_dir: Path, devices: int, warmup: int, steps: int, block: int, batch_size: int = DDP_BATCH,
            extra: Sequence[str] = (), timeout_s: float = 900) -> dict[str, Any]:
    """The paper recipe under ``trainer=ddp`` on ``devices`` devices from ``cache_dir``, as a
    ``python -m joint_colsr.train`` command; the node's images/s (the sum over ranks), each
    rank's syncs per step between logging steps, and the command's exit."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        stem = Path(tmp) / "timing"
        command = [sys.executable, "-m", "joint_colsr.train", "experiment=paper", "trainer=ddp", f"trainer.devices={devices}",
                   f"data.cache={cache_dir}", f"data.batch_size={batch_size}", "logger=csv",
                   f"data.train_samples_per_epoch={batch_size * devices * (warmup + steps)}", "trainer.max_epochs=1",
                   "+trainer.num_sanity_val_steps=0", "trainer.limit_val_batches=1",
                   "+callbacks.gpu_check_timer._target_=joint_colsr.bench.gpu_check.step_timer",
                   f"+callbacks.gpu_check_timer.path={stem}", f"+callbacks.gpu_check_timer.warmup={warmup}",
                   f"+callbacks.gpu_check_timer.steps={steps}", f"+callbacks.gpu_check_timer.block={block}",
                   f"+callbacks.gpu_check_timer.batch_size={batch_size}", f"hydra.run.dir={Path(tmp) / 'run'}", *extra]
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            return {"devices": devices, "batch_size": batch_size,
                    "error": f"failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-300:]}"}
        ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("timing.rank*.json"))]
    if len(ranks) != devices:
        return {"devices": devices, "batch_size": batch_size, "error": f"failed: {len(ranks)} of {devices} ranks reported"}
    rates = [r["images_per_s"] for r in ranks]
    return {"devices": devices, "batch_size": batch_size, "warmup_steps": warmup, "timed_steps": steps,
            "images_per_s": sum(rates) if all(rates) else None, "rank_images_per_s": rates,
            "syncs_per_step": [r["syncs_per_step"] for r in ranks], "sync_checked_steps": [r["sync_checked_steps"] for r in ranks],
            "peak_memory_gib": [r["peak_memory_gib"] for r in ranks], "seconds": seconds}


# -- smoke run, EMA device, determinism -------------------------------------------------------------------


def small_run(overrides: Sequence[str]) -> dict[str, Any]:
    """``python -m joint_colsr.train`` with ``overrides`` (tiny output dir); returns the final
    metrics, the weights, and where the EMA average and the module live."""
    import lightning.pytorch as pl
    from omegaconf import open_dict

    from joint_colsr.assembly import build_callbacks, build_datamodule, build_system, build_trainer, start_run
    from joint_colsr.bench.models import compose_train_config
    from joint_colsr.run.callbacks import EMA

    devices: dict[str, str] = {}

    class WhereIsTheAverage(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            for callback in trainer.callbacks:
                if isinstance(callback, EMA) and callback._average_model is not None:
                    devices["ema"] = str(next(callback._average_model.parameters()).device)
            devices["module"] = str(pl_module.device)

    cfg = compose_train_config(["logger=csv", *overrides])
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        with open_dict(cfg):
            cfg.paths.output_dir = tmp
        start_run(cfg)
        system = build_system(cfg, startup_checks=True)
        trainer = build_trainer(cfg, [*build_callbacks(cfg, system), WhereIsTheAverage()], [])
        start = time.perf_counter()
        trainer.fit(system, datamodule=build_datamodule(cfg))
        seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    weights = {k: v.detach().float().cpu() for k, v in system.state_dict().items()}
    return {"metrics": metrics, "devices": devices, "weights": weights, "seconds": seconds, "global_step": trainer.global_step}


def determinism(overrides: Sequence[str]) -> dict[str, Any]:
    """Two seeded ``trainer.deterministic=true`` runs: equal weights and metrics?"""
    runs = [small_run(["trainer.deterministic=true", "seed=0", *overrides]) for _ in range(2)]
    a, b = runs[0]["weights"], runs[1]["weights"]
    max_diff = max(float((a[k] - b[k]).abs().max()) if a[k].numel() else 0.0 for k in a)
    return {"equal": max_diff == 0.0, "max_abs_weight_diff": max_diff, "metrics": [r["metrics"] for r in runs],
            "overrides": ["trainer.deterministic=true", "seed=0", *overrides]}


# -- the report -------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {
        "device": torch.cuda.get_device_name(0), "multiprocessors": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(), "cpu_cores": os.cpu_count(),
    }


def render_markdown(r: dict[str, Any]) -> str:
    env, ceil = r["environment"], r.get("ceilings") or {}
    lines = [
        "## GPU check (`make gpu-check`)",
        "",
        f"Measured {r['date']} on {env['device']} ({env['memory_gib']} GiB, {env['multiprocessors']} SMs), torch "
        f"{env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, {env['cpu_cores']} CPU cores; "
        f"{r['seconds']:.0f} s in all. Command: `python -m joint_colsr.bench --gpu-check`.",
        "",
    ]
    if ceil:
        lines += [f"Ceilings measured here: bf16 matrix product {ceil['bf16_matmul_tflops']:.0f} TFLOP/s, device copy "
                  f"{ceil['copy_gb_per_s']:.0f} GB/s (read + written).", ""]
    work = r.get("work_per_image")
    if work:
        lines += [f"One paper-recipe training step per image: {work['flops'] / 1e9:.1f} GFLOP, {work['bytes'] / 1e6:.0f} MB "
                  "moved unfused: at the ceilings above that is "
                  f"{r['roofs']['flops_images_per_s']:,.0f} img/s (arithmetic) and {r['roofs']['memory_images_per_s']:,.0f} "
                  "img/s (memory traffic).", ""]
    runs = r.get("paper_recipe") or []
    if runs:
        lines += [
            f"Paper recipe (`experiment=paper`, its callbacks, data from a synthetic {r['cache_images']:,}-image "
            "decoded-image cache read by the cache loader's gathering thread), CUDA events around blocks of steps after the warm-up:",
            "",
            "| batch | channels_last + compile | img/s | TFLOP/s (of peak) | peak memory GiB | syncs/step between logging steps | paper schedule at this rate |",
            "|---|---|---|---|---|---|---|",
        ]
        for run in runs:
            if "skipped" in run or "error" in run:
                lines.append(f"| {run['batch_size']} | {run['channels_last_compile']} | {run.get('skipped') or run.get('error')} | | | | |")
                continue
            tflops = run["images_per_s"] * work["flops"] / 1e12 if work else float("nan")
            share = f" ({100 * tflops / ceil['bf16_matmul_tflops']:.0f}%)" if ceil else ""
            hours = 118287 * 148 / run["images_per_s"] / 3600
            memory = "n/a" if run["peak_memory_gib"] is None else f"{run['peak_memory_gib']:.1f}"
            syncs = "n/a" if run["syncs_per_step"] is None else f"{run['syncs_per_step']:.2f} ({run['sync_checked_steps']} steps)"
            lines.append(f"| {run['batch_size']} | {run['channels_last_compile']} | {run['images_per_s']:,.0f} | {tflops:.0f}{share} | "
                         f"{memory} | {syncs} | {hours:.2f} h |")
        lines.append("")
    crops = r.get("paper_recipe_random_crops")
    if crops:
        if "skipped" in crops or "error" in crops:
            lines += [f"Random crops: {crops.get('skipped') or crops.get('error')}", ""]
        else:
            syncs = "n/a" if crops["syncs_per_step"] is None else f"{crops['syncs_per_step']:.2f} ({crops['sync_checked_steps']} steps)"
            memory = "n/a" if crops["peak_memory_gib"] is None else f"{crops['peak_memory_gib']:.1f} GiB"
            lines += [f"Random crops (`{' '.join(CROP_OVERRIDES)}`, cropped and resized on the device) from a synthetic "
                      f"{crops['cache_side']}-pixel cache, batch {crops['batch_size']}, eager: {crops['images_per_s']:,.0f} img/s, "
                      f"syncs/step between logging steps {syncs}, peak memory {memory}.", ""]
    ddp = r.get("paper_recipe_ddp")
    if ddp:
        if "skipped" in ddp or "error" in ddp:
            lines += [f"DDP over the node's GPUs: {ddp.get('skipped') or ddp.get('error')}", ""]
        else:
            single = next((run["images_per_s"] for run in runs if run.get("batch_size") == ddp["batch_size"]
                           and not run.get("channels_last_compile") and run.get("images_per_s")), None)
            scaling = f", {ddp['images_per_s'] / single:.2f}x one GPU's {single:,.0f} img/s" if single else ""
            syncs = ", ".join("n/a" if v is None else f"{v:.2f}" for v in ddp["syncs_per_step"])
            lines += [f"DDP (`trainer=ddp`) over {ddp['devices']} GPUs, batch {ddp['batch_size']} per GPU, eager: "
                      f"{ddp['images_per_s']:,.0f} img/s for the node{scaling}; syncs/step between logging steps per rank: "
                      f"{syncs}.", ""]
    for key, title in (("smoke", "2-epoch smoke run"), ("determinism", "Determinism")):
        part = r.get(key)
        if not part:
            continue
        if "skipped" in part or "error" in part:
            lines += [f"{title}: {part.get('skipped') or part.get('error')}", ""]
        elif key == "smoke":
            m = part["metrics"]
            lines += [f"{title} (`trainer=gpu`, embedded photos, callbacks=ema): val/psnr {m.get('val/psnr', float('nan')):.2f} dB, "
                      f"val/psnr_gray {m.get('val/psnr_gray', float('nan')):.2f} dB, val/loss {m.get('val/loss', float('nan')):.4f}, "
                      f"{part['global_step']} steps in {part['seconds']:.1f} s. EMA average on {part['devices'].get('ema')}, "
                      f"model on {part['devices'].get('module')}.", ""]
        else:
            lines += [f"{title}: two seeded runs ({' '.join(part['overrides'])}) give "
                      f"{'equal' if part['equal'] else 'DIFFERENT'} weights (max abs difference {part['max_abs_weight_diff']:.3g}).", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m joint_colsr.bench --gpu-check", description=__doc__.split("\n")[0])
    parser.add_argument("--gpu-check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks"), help="where gpu-check.json and RESULTS.md go")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting new parts after this many seconds")
    parser.add_argument("--warmup", type=int, default=40, help="training steps before timing (beyond the prefetch depth)")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per run")
    parser.add_argument("--block", type=int, default=20, help="steps between CUDA events")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/gpu_check"),
                        help="where the synthetic cache is written (removed at the end; its size is checked against "
                             "the free space first)")
    parser.add_argument("--cache-images", type=int, default=None,
                        help="training images in the synthetic cache (default: enough that no timed step repeats one)")
    args = parser.parse_args(argv)
    reason = no_gpu_message()
    if reason:
        print(reason)
        return NO_GPU_EXIT
    try:
        import hydra  # noqa: F401
        import kornia  # noqa: F401
        import lightning  # noqa: F401
    except ImportError as err:
        print(f"gpu-check: {err.name} is missing; install the wheelhouse first (docs/offline-install.md)")
        return 3
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()

    def left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    result: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "environment": environment()}
    result["ceilings"] = device_ceilings()
    from joint_colsr.bench.models import compose_train_config

    work = step_work_per_image(compose_train_config(["experiment=paper", "data.root=unused"]))
    result["work_per_image"] = work
    result["roofs"] = {"flops_images_per_s": result["ceilings"]["bf16_matmul_tflops"] * 1e12 / work["flops"],
                       "memory_images_per_s": result["ceilings"]["copy_gb_per_s"] * 1e9 / work["bytes"]}
    max_batch = max(b for b, _ in RUNS)
    cache_images = args.cache_images or max_batch * (args.warmup + args.steps)
    result["cache_images"] = cache_images
    result["paper_recipe"] = []
    check_free_space(args.work_dir, synthetic_cache_bytes(cache_images, VAL_IMAGES))
    with tempfile.TemporaryDirectory(prefix="gpu_check_cache_", dir=args.work_dir) as tmp:
        cache = write_synthetic_cache(Path(tmp) / "cache", cache_images, VAL_IMAGES)
        for batch_size, fast in RUNS:
            entry: dict[str, Any] = {"batch_size": batch_size, "channels_last_compile": fast}
            if left() < (150 if fast else 60):
                entry["skipped"] = f"skipped: {left():.0f} s of the budget left"
            else:
                try:
                    entry = paper_recipe_run(cache, batch_size, fast, args.warmup, args.steps, args.block)
                except Exception as err:  # noqa: BLE001 - one failed run must not lose the others' numbers
                    entry["error"] = f"failed: {type(err).__name__}: {str(err)[:300]}"
            result["paper_recipe"].append(entry)
            print(json.dumps(entry))
            torch.cuda.empty_cache()
        devices = torch.cuda.device_count()
        if devices < 2:
            result["paper_recipe_ddp"] = {"devices": devices, "skipped": f"skipped: {devices} GPU on this node (DDP needs 2 or more)"}
        elif left() < 150:
            result["paper_recipe_ddp"] = {"devices": devices, "skipped": f"skipped: {left():.0f} s of the budget left"}
        else:
            result["paper_recipe_ddp"] = ddp_run(cache, devices, args.warmup, args.steps, args.block, timeout_s=max(left(), 150))
        print(json.dumps(result["paper_recipe_ddp"]))
    result["paper_recipe_random_crops"] = random_crop_run(args, left())
    print(json.dumps(result["paper_recipe_random_crops"]))
    for key, fn in (("smoke", lambda: _without_weights(small_run(["trainer=gpu", "trainer.max_epochs=2"]))),
                    ("determinism", lambda: determinism(["trainer=gpu", "trainer.max_epochs=1"]))):
        if left() < 30:
            result[key] = {"skipped": f"skipped: {left():.0f} s of the budget left"}
            continue
        try:
            result[key] = fn()
        except Exception as err:  # noqa: BLE001
            result[key] = {"error": f"failed: {type(err).__name__}: {str(err)[:300]}"}
        print(key, json.dumps(result[key])[:400])
    result["seconds"] = time.perf_counter() - started
    from joint_colsr.bench import replace_report_section
    from joint_colsr.run.outputs import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "gpu-check.json", result)
    report = replace_report_section(args.out, BEGIN, END, render_markdown(result), at_top=True)
    print(render_markdown(result))
    print(f"gpu-check: wrote {args.out / 'gpu-check.json'} and {report}")
    return 0


def random_crop_run(args: argparse.Namespace, seconds_left: float, batch_size: int = 160) -> dict[str, Any]:
    """The paper recipe with random crops from a :data:`CROP_CACHE_SIZE`-pixel synthetic cache
    (written under ``args.work_dir``, removed after), eager, at ``batch_size``."""
    if seconds_left < 90:
        return {"skipped": f"skipped: {seconds_left:.0f} s of the budget left"}
    images = batch_size * (args.warmup + args.steps)
    check_free_space(args.work_dir, synthetic_cache_bytes(images, VAL_IMAGES, train_size=CROP_CACHE_SIZE))
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_check_crops_", dir=args.work_dir) as tmp:
            cache = write_synthetic_cache(Path(tmp) / "cache", images, VAL_IMAGES, train_size=CROP_CACHE_SIZE)
            entry = paper_recipe_run(cache, batch_size, False, args.warmup, args.steps, args.block, extra=CROP_OVERRIDES)
    except Exception as err:  # noqa: BLE001 - the other parts' numbers stay
        return {"batch_size": batch_size, "error": f"failed: {type(err).__name__}: {str(err)[:300]}"}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {**entry, "cache_side": CROP_CACHE_SIZE, "cache_images": images}


def _without_weights(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "weights"}
