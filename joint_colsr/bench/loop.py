"""Timing training steps: our Lightning run (built from the config) and a raw PyTorch loop.

Both sides see the same thing: the same pre-made uint8 batches (decoded once, so photo
decoding does not drown the difference), the same device-side LAB conversion (the data
module's ``on_after_batch_transfer``), the same network and the same optimizer config.
A step's time is measured from one batch's arrival on the device to the next one's, so
it covers everything a training loop does per batch: fetch, transfer, LAB conversion,
forward, loss, backward, optimizer step and, on the Lightning side, hooks, logging and
the progress bar.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import tempfile
import time
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from joint_colsr.assembly import build_callbacks, build_datamodule, build_loggers, build_system, build_trainer
from joint_colsr.run.averaging import EMAModel
from joint_colsr.data.loaders import owned_batch


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a wall-clock stamp means the work before it is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepStamps:
    """Time stamps at step boundaries that never make the host wait for the device.

    On a GPU each stamp is a CUDA event (recorded when the host reaches it, completed when the
    device does); durations are read once, after the last step (:meth:`seconds`), so the timed
    steps run as in training, the host queueing ahead. On a CPU: the wall clock. Every stamp
    also records the host's wall and process clocks (:attr:`wall`, :attr:`cpu`).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.events: list[Any] = []
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def stamp(self) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.events.append(event)
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def __len__(self) -> int:
        return len(self.wall)

    def seconds(self) -> list[float]:
        """Seconds between consecutive stamps (device time on a GPU: one wait, here, at the end)."""
        if self.events:
            self.events[-1].synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.events, self.events[1:])]
        return _diffs(self.wall)


def accelerator_device(accelerator: str) -> torch.device:
    """``cpu`` | ``gpu`` | ``cuda`` | ``auto`` -> the torch device a one-device Trainer uses."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- data ------------------------------------------------------------------------------------


def make_uint8_batches(cfg: DictConfig, batch_size: int, count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` distinct training batches of the configured data, as the DataLoader yields them.

    Decoded once in this process (``num_workers=0``): the model benchmarks then measure the
    model and the training loop, not photo decoding (the data benchmark measures that).
    """
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.data.batch_size = batch_size
        cfg.data.num_workers = 0
        cfg.data.train_samples_per_epoch = batch_size * count
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    # Cache batches live in reused buffers: each is kept as its own copy, cropped and flipped.
    batches = [owned_batch(b, datamodule.output_size) for b in itertools.islice(datamodule.train_dataloader(), count)]
    if len(batches) < count or batches[-1]["rgb"].shape[0] != batch_size:
        raise RuntimeError(f"the data source gave fewer than {count} full batches of {batch_size}")
    return batches


class CycledBatches(Dataset):
    """``length`` items cycling through pre-made batches (use with ``DataLoader(batch_size=None)``)."""

    def __init__(self, batches: Sequence[Any], length: int) -> None:
        if not batches:
            raise ValueError("batches must not be empty")
        self.batches = list(batches)
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.batches[index % len(self.batches)]


def cycled_loader(batches: Sequence[Any], length: int) -> DataLoader:
    return DataLoader(CycledBatches(batches, length), batch_size=None, shuffle=False, num_workers=0)


class PremadeTrainBatches(pl.LightningDataModule):
    """The configured data module with its training loader replaced by pre-made batches.

    Validation and the device-side LAB conversion are the configured module's own.
    """

    def __init__(self, base: pl.LightningDataModule, batches: Sequence[Any], length: int) -> None:
        super().__init__()
        self.base = base
        self.batches = batches
        self.length = length

    def setup(self, stage: str | None = None) -> None:
        self.base.setup("validate")

    def train_dataloader(self) -> DataLoader:
        return cycled_loader(self.batches, self.length)

    def val_dataloader(self) -> DataLoader:
        return self.base.val_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.base.on_after_batch_transfer(batch, dataloader_idx)


# -- timing ----------------------------------------------------------------------------------


class StepTimer(pl.Callback):
    """Stamps (:class:`StepStamps`: CUDA events on a GPU, no synchronization) when each training
    batch reaches the step, after ``warmup`` batches.

    ``steps`` intervals are measured (``steps + 1`` stamps), or fewer once ``max_seconds``
    have passed; then it asks the Trainer to stop after the current batch. With
    ``count_flops`` that last, unmeasured batch runs under ``FlopCounterMode`` and
    :attr:`flops_per_image` holds the FLOPs of one full training step per image
    (forward, backward; every network the step trains).
    """

    def __init__(self, warmup: int, steps: int, device: torch.device, max_seconds: float | None = None, count_flops: bool = False) -> None:
        super().__init__()
        if warmup < 0 or steps < 1:
            raise ValueError(f"need warmup >= 0 and steps >= 1, got warmup={warmup}, steps={steps}")
        self.warmup, self.steps, self.device, self.max_seconds = warmup, steps, device, max_seconds
        self.count_flops = count_flops
        self.clock = StepStamps(device)
        self.stamps = self.clock.wall  # host wall clock at each stamp
        self.cpu_stamps = self.clock.cpu
        self.flops_per_image: float | None = None
        self._counter: FlopCounterMode | None = None
        self._batch_size = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx < self.warmup or trainer.should_stop:
            return
        self.clock.stamp()
        out_of_time = self.max_seconds is not None and len(self.stamps) >= 2 and self.stamps[-1] - self.stamps[0] >= self.max_seconds
        if len(self.stamps) > self.steps or out_of_time:
            trainer.should_stop = True
            if self.count_flops:
                self._batch_size = _batch_size(batch)
                self._counter = FlopCounterMode(display=False)
                self._counter.__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops_per_image = self._counter.get_total_flops() / max(self._batch_size, 1)
            self._counter = None

    @property
    def step_seconds(self) -> list[float]:
        """Seconds of each timed step (device time on a GPU, wall clock on a CPU)."""
        return self.clock.seconds()

    @property
    def step_cpu_seconds(self) -> list[float]:
        """CPU seconds this process spent on each timed step (see :func:`step_clock`)."""
        return _diffs(self.cpu_stamps)


def _diffs(stamps: Sequence[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


def step_clock(device: torch.device) -> str:
    """Which clock compares two training loops fairly on ``device``.

    On a GPU: the device's clock (CUDA events between steps; :class:`StepStamps`). On a CPU: this process's
    CPU time (``time.process_time``). With one torch thread it counts the work done and
    not the time spent waiting for a core, so other jobs on a shared machine change it
    far less than they change the wall clock.
    """
    return "wall" if device.type == "cuda" else "cpu"


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                return int(value.shape[0])
    return 0


def summarize(seconds: Sequence[float], images_per_step: int) -> dict[str, Any]:
    """Median time per step, images/s from it, and the spread (max-min)/median as noise."""
    if not seconds:
        raise ValueError("no timings to summarize")
    median = statistics.median(seconds)
    return {
        "seconds_per_step": median,
        "images_per_s": images_per_step / median,
        "spread": (max(seconds) - min(seconds)) / median,
        "samples": len(seconds),
    }


# -- the two loops ---------------------------------------------------------------------------

#: Config overrides of every benchmark fit: no sanity check, one short epoch ending in one
#: validation batch (ReduceLROnPlateau needs val/loss), stopping early is allowed.
FIT_OVERRIDES = {"num_sanity_val_steps": 0, "limit_val_batches": 1, "max_epochs": 1, "min_epochs": 0}


def lightning_fit_timed(
    cfg: DictConfig,
    system: pl.LightningModule,
    warmup: int,
    steps: int,
    batches: Sequence[Any] | None = None,
    max_seconds: float | None = None,
    count_flops: bool = False,
) -> StepTimer:
    """One ``Trainer.fit`` of ``system`` built from ``cfg`` exactly as ``train`` builds it
    (its callbacks, loggers and Trainer arguments); returns the timer.

    With ``batches``, training reads those pre-made batches; without, it reads the
    configured data module (decoding in ``data.num_workers`` workers: the real data path).
    ``system`` may be reused across calls (compiled code is kept; each fit makes a fresh
    optimizer). Runs write into a temporary directory.
    """
    length = warmup + steps + 1
    cfg = copy.deepcopy(cfg)
    with tempfile.TemporaryDirectory(prefix="joint_colsr_bench_") as tmp, open_dict(cfg):
        cfg.paths.output_dir = tmp
        for key, value in FIT_OVERRIDES.items():
            cfg.trainer[key] = value
        cfg.trainer.pop("max_steps", None)
        if batches is None:
            cfg.data.train_samples_per_epoch = cfg.data.batch_size * length
            datamodule = build_datamodule(cfg)
        else:
            datamodule = PremadeTrainBatches(build_datamodule(cfg), batches, length=length)
        device = accelerator_device(str(cfg.trainer.accelerator))
        timer = StepTimer(warmup, steps, device, max_seconds=max_seconds, count_flops=count_flops)
        trainer = build_trainer(cfg, [*_callbacks_for(cfg, system), timer], build_loggers(cfg))
        trainer.fit(system, datamodule=datamodule)
    if len(timer.stamps) < 2:
        raise RuntimeError("the benchmark fit ended before two timed batches; is trainer.max_steps limiting it?")
    return timer


def _callbacks_for(cfg: DictConfig, system: pl.LightningModule) -> list[pl.Callback]:
    """The run's callbacks exactly as ``train`` builds them."""
    return build_callbacks(cfg, system=system)


def raw_loop_timed(
    cfg: DictConfig,
    net: torch.nn.Module,
    batches: Sequence[Any],
    warmup: int,
    steps: int,
    convert: Callable[[Any, int], Any],
) -> tuple[list[float], list[float]]:
    """The same training as a plain PyTorch loop: seconds of each of ``steps`` steps.

    ``net`` is trained on MSE(net(l_lowres), ab_target) with the optimizer of
    ``cfg.model.optimizer``, under the autocast ``cfg.trainer.precision`` asks for, and,
    when the config's callbacks average the weights (``EMAWeightAveraging``), with the
    same EMA update: that is training work, not framework overhead. No hooks, no
    logging, no progress bar; the loss is not read back to the host.

    Returns:
        ``(wall_seconds, cpu_seconds)``: one entry per step in each.
    """
    device = accelerator_device(str(cfg.trainer.accelerator))
    # What the Trainer sets from trainer.benchmark (None leaves torch's setting alone).
    if cfg.trainer.get("benchmark") is not None:
        torch.backends.cudnn.benchmark = bool(cfg.trainer.benchmark)
    net.to(device).train()
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    ema_cfg = ema_callback_config(cfg)
    ema = None
    if ema_cfg is not None:
        ema = EMAModel(net, decay=float(ema_cfg.get("decay", 0.999)), use_buffers=bool(ema_cfg.get("use_buffers", True)))
        every = int(ema_cfg.get("update_every_n_steps", 1))
    autocast = _autocast(str(cfg.trainer.precision), device)
    clock = StepStamps(device)
    for index, batch in enumerate(cycled_loader(batches, warmup + steps + 1)):
        batch = convert({k: v.to(device, non_blocking=True) for k, v in batch.items()}, 0)
        if index >= warmup:
            clock.stamp()
        with autocast:
            ab_pred = net(batch["l_lowres"])
        loss = F.mse_loss(ab_pred.float(), batch["ab_target"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None and every > 0 and index % every == 0:
            ema.update_parameters(net)
    return clock.seconds(), _diffs(clock.cpu)


def ema_callback_config(cfg: DictConfig) -> DictConfig | None:
    """The config of an EMA callback (ours or Lightning's) among ``cfg.callbacks``, if any."""
    for conf in (cfg.get("callbacks") or {}).values():
        if isinstance(conf, DictConfig) and str(conf.get("_target_", "")).endswith(("EMAWeightAveraging", "callbacks.EMA")):
            return conf
    return None


def _autocast(precision: str, device: torch.device) -> Any:
    if precision in ("32-true", "32", "64-true"):
        return nullcontext()
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("16-mixed", "16"):
        return torch.autocast(device.type, dtype=torch.float16)
    raise ValueError(f"the raw loop supports trainer.precision 32-true, bf16-mixed or 16-mixed, got {precision!r}")


def block_seconds(step_seconds: Sequence[float], block: int) -> list[float]:
    """Mean step time of each run of ``block`` consecutive steps (an incomplete tail is dropped)."""
    return [statistics.fmean(step_seconds[i:i + block]) for i in range(0, len(step_seconds) - block + 1, block)]


def compare_lightning_raw(cfg: DictConfig, batches: Sequence[Any], warmup: int, steps: int, repeats: int, block: int = 5) -> dict[str, Any]:
    """Our Lightning training vs the raw loop on the same model, data and optimizer.

    Repeats alternate the two (Lightning first in even repeats, raw first in odd ones) so a
    machine that slows down mid-run hits both alike. Steps are grouped in blocks of
    ``block`` consecutive steps (5 = the logging and progress-bar period of the default
    config, so periodic costs are inside every block); each side's time is the median block
    mean over all repeats, which ignores bursts from other processes on a shared machine.
    ``ratio`` is Lightning / raw on the clock :func:`step_clock` picks (``ratio_wall`` and
    ``ratio_cpu`` give both); ``ratio_per_repeat`` shows how much it moves.
    """
    if str(cfg.trainer.precision) == "16-mixed":
        raise ValueError("compare with 32-true or bf16-mixed: 16-mixed adds a grad scaler the raw loop does not have")
    if steps < block:
        raise ValueError(f"steps ({steps}) must be at least one block ({block})")
    clock = step_clock(accelerator_device(str(cfg.trainer.accelerator)))
    torch.manual_seed(0)
    lightning_system = build_system(cfg)
    torch.manual_seed(0)
    raw_net = build_system(cfg).net
    convert = build_datamodule(cfg).on_after_batch_transfer
    blocks: dict[tuple[str, str], list[list[float]]] = {(side, c): [] for side in ("lightning", "raw") for c in ("wall", "cpu")}
    for repeat in range(repeats):
        order = ("lightning", "raw") if repeat % 2 == 0 else ("raw", "lightning")
        for side in order:
            if side == "lightning":
                timer = lightning_fit_timed(cfg, lightning_system, warmup, steps, batches=batches)
                wall, cpu = timer.step_seconds, timer.step_cpu_seconds
            else:
                wall, cpu = raw_loop_timed(cfg, raw_net, batches, warmup, steps, convert)
            blocks[side, "wall"].append(block_seconds(wall, block))
            blocks[side, "cpu"].append(block_seconds(cpu, block))
    batch_size = int(batches[0]["rgb"].shape[0])
    pooled = {key: [x for rep in reps for x in rep] for key, reps in blocks.items()}
    ratios = {c: statistics.median(pooled["lightning", c]) / statistics.median(pooled["raw", c]) for c in ("wall", "cpu")}
    return {
        "ratio": ratios[clock],
        "clock": clock,
        "ratio_wall": ratios["wall"],
        "ratio_cpu": ratios["cpu"],
        "ratio_per_repeat": [
            statistics.median(a) / statistics.median(b) for a, b in zip(blocks["lightning", clock], blocks["raw", clock])
        ],
        "lightning": {**summarize(pooled["lightning", "wall"], batch_size), "cpu_seconds_per_step": statistics.median(pooled["lightning", "cpu"])},
        "raw_loop": {**summarize(pooled["raw", "wall"], batch_size), "cpu_seconds_per_step": statistics.median(pooled["raw", "cpu"])},
        "batch_size": batch_size,
        "warmup_steps": warmup,
        "steps_per_repeat": steps,
        "repeats": repeats,
        "block_steps": block,
    }


class _LogCallCost(pl.Callback):
    """Times ``pl_module.log`` inside a running fit (at the third batch), the way a training step calls it."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.cpu_seconds_per_call: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx != 2:
            return
        value = torch.zeros((), device=pl_module.device)
        start = time.process_time()
        for _ in range(self.calls):
            pl_module.log("bench/log_call", value, prog_bar=True, batch_size=1)
        self.cpu_seconds_per_call = (time.process_time() - start) / self.calls


def self_log_cost(cfg: DictConfig, system: pl.LightningModule, batches: Sequence[Any], calls: int = 1000) -> float:
    """CPU seconds of one ``self.log(name, tensor)`` call in a training step of our fit.

    Lightning's ``_ResultCollection.log`` moves the logged metric's state to the value's
    device on every call; a training step pays this once per logged value.
    """
    timer = _LogCallCost(calls)
    cfg = copy.deepcopy(cfg)
    with tempfile.TemporaryDirectory(prefix="joint_colsr_bench_") as tmp, open_dict(cfg):
        cfg.paths.output_dir = tmp
        for key, value in FIT_OVERRIDES.items():
            cfg.trainer[key] = value
        cfg.trainer.max_steps = 4
        trainer = build_trainer(cfg, [*_callbacks_for(cfg, system), timer], build_loggers(cfg))
        trainer.fit(system, datamodule=PremadeTrainBatches(build_datamodule(cfg), batches, length=4))
    if timer.cpu_seconds_per_call is None:
        raise RuntimeError("the fit ended before the log calls were timed")
    return timer.cpu_seconds_per_call
