"""Lightning callbacks of the suite (the rest come from Lightning itself)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import EMAWeightAveraging, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

from joint_colsr.color import resize_uint8
from joint_colsr.run.averaging import EMAModel
from joint_colsr.run.checkpointing import checkpoint_paths
from joint_colsr.run.syncs import is_logging_batch
from joint_colsr.viz import VALIDATION_COLUMNS, colorization_rows, make_grid, save_png

log = logging.getLogger(__name__)


class ValidationImageGrid(pl.Callback):
    """After each validation epoch, save (and log) a grid of the first validation images.

    Columns (titled in the picture): input L* upscaled (bicubic) | prediction (ground-truth
    L* + predicted a*b*) | ground truth; each row is captioned with the prediction's PSNR and
    the gray image's. Files in ``dirpath``: ``val_latest.png`` (every epoch) and
    ``val_best_epoch{NNN}.png``, the grid of the epoch the best checkpoint holds (by that
    checkpoint's monitored metric; the previous best grid is replaced). ``keep_all=True`` also
    keeps ``val_epoch{NNN}.png`` of every epoch (about 2 MB each at 8 rows of 256 px).
    Loggers that take images (wandb) get every epoch's grid as ``val/examples``.

    Args:
        dirpath: where PNGs go.
        num_images: rows of the grid.
        keep_all: keep every epoch's grid as well.
    """

    def __init__(self, dirpath: str, num_images: int = 8, keep_all: bool = False) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self.keep_all = keep_all
        self.best_path: Path | None = None
        self._best: float | None = None
        self._grid: Any = None

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._grid = None
        examples = getattr(pl_module, "val_examples", None)
        if not examples or trainer.sanity_checking:
            return
        rows = colorization_rows(
            examples["l_lowres"], examples["l_highres"], examples["ab_pred"], examples["rgb_target"], limit=self.num_images
        )
        titles = list(VALIDATION_COLUMNS)
        if "exemplar_rgb" in examples:  # validation with exemplars (data.val_exemplar): what steered each row (black: none)
            exemplars = resize_uint8(examples["exemplar_rgb"][: len(rows)], tuple(examples["rgb_target"].shape[-2:]))
            rows = [[*row, exemplar] for row, exemplar in zip(rows, exemplars)]
            titles.append("exemplar")
        self._grid = make_grid(rows, column_titles=titles)

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not at epoch end: the epoch's metrics are final only now (the best-so-far test
        # reads the value the checkpoint callback, which runs after this one, compares).
        grid, self._grid = self._grid, None
        if grid is None:
            return
        epoch = trainer.current_epoch
        save_png(grid, self.dirpath / "val_latest.png")
        if self.keep_all:
            save_png(grid, self.dirpath / f"val_epoch{epoch:03d}.png")
        if self._is_best(trainer):
            previous, self.best_path = self.best_path, save_png(grid, self.dirpath / f"val_best_epoch{epoch:03d}.png")
            if previous is not None and previous != self.best_path:
                previous.unlink(missing_ok=True)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(
                    key="val/examples", images=[grid], step=trainer.global_step,
                    caption=[" | ".join(VALIDATION_COLUMNS)],
                )

    def _is_best(self, trainer: pl.Trainer) -> bool:
        selecting = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)]
        if not selecting:
            return False
        monitor, mode = selecting[0].monitor, selecting[0].mode
        value = trainer.callback_metrics.get(monitor)
        if value is None or not torch.isfinite(torch.as_tensor(value)):
            return False
        value = float(value)
        better = self._best is None or (value > self._best if mode == "max" else value < self._best)
        if better:
            self._best = value
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"best": self._best, "best_path": str(self.best_path) if self.best_path else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._best = state_dict.get("best")
        self.best_path = Path(state_dict["best_path"]) if state_dict.get("best_path") else None


class ProgressBar(TQDMProgressBar):
    """Lightning's TQDM progress bar, showing training values read at logging steps only.

    A value logged with ``prog_bar=True`` is read back to the host by Lightning after every
    batch, whether the bar shows it or not (a GPU sync per step). The systems log their
    losses without it; this bar reads ``keys`` from the logged values at the steps where
    Lightning reads them for the loggers (every ``trainer.log_every_n_steps``) and shows
    those until the next one.

    Args:
        refresh_rate: redraw every N batches.
        keys: logged names to show (missing ones are skipped).
    """

    def __init__(self, refresh_rate: int = 1, keys: tuple[str, ...] | list[str] = ("train/loss",)) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.keys = tuple(keys)
        self._shown: dict[str, float] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if is_logging_batch(trainer):
            logged = trainer.callback_metrics
            self._shown.update({k: float(logged[k]) for k in self.keys if k in logged})
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._shown = {}

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        shown = super().get_metrics(trainer, pl_module)
        # PSNRs to 2 decimals, as the final line and the checkpoint names print them (tqdm's
        # 3 significant digits would show 21.33 as 21.30).
        for key, value in shown.items():
            if "psnr" in key and isinstance(value, (int, float)):
                shown[key] = f"{value:.2f}"
        return {**shown, **{k: f"{v:.4g}" for k, v in self._shown.items()}}


class TrainingSampleBudget(pl.Callback):
    """End training after exactly ``samples`` training samples, the last batch cut short.

    The one way a run trains on an exact amount of compute (``compare`` sets it per contender
    from the training FLOPs budget): ``trainer.max_steps`` counts whole batches, so a budget
    that buys 101 samples at batch 16 would otherwise train 96 or 112. The last batch keeps
    its first ``samples - seen`` samples (every tensor whose first dimension is the batch);
    then ``trainer.should_stop`` ends the run after its validation and last checkpoint, as
    early stopping does. The count travels in the checkpoint, so a resumed run stops at the
    same sample. Under DDP it counts all ranks (each rank's batch x world size) and cuts each
    rank's last batch to an equal share.

    Args:
        samples: training samples to train on, or ``None`` (the default: no limit).
    """

    def __init__(self, samples: int | None = None) -> None:
        super().__init__()
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise ValueError(f"callbacks.sample_budget.samples must be a positive integer or null, got {samples!r}")
        self.samples = samples
        self.seen = 0

    def steps_at_batch_size(self, batch_size: int, world_size: int = 1) -> int:
        """Optimizer steps the whole budget lasts when every batch is full (the last one cut short)."""
        return math.ceil(self.samples / (batch_size * world_size))

    @staticmethod
    def _batch_len(batch: Any) -> int:
        return next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim == 4)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.samples is None:
            return
        n, world = self._batch_len(batch), trainer.world_size
        left = max(1, (self.samples - self.seen) // world)
        if n > left:
            for key, value in list(batch.items()):
                if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
                    batch[key] = value[:left]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.samples is not None and self.seen >= self.samples:  # resumed from the run's last save
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.samples is None:
            return
        self.seen += self._batch_len(batch) * trainer.world_size
        if self.seen >= self.samples:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "samples": self.samples}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seen = int(state_dict.get("seen", 0))


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or Inf; the message names the step and the values."""


class StopOnNonFinite(pl.Callback):
    """Stop training on a NaN/Inf loss or gradient; the last checkpoint on disk stays the last good one.

    With ``check_every_n_steps=1`` (the default) the check runs *before* every optimizer
    step: the weights are never updated with the bad values, and the error names the global
    step, the epoch, the batch and the loss values. It costs one device-to-host read per
    step: the loss and every gradient are folded into a single finiteness flag on the
    device (``torch.nn.utils.get_total_norm``); names of the bad parameters are looked up
    only after it fails. (Reading each gradient back, as a first version did, made the
    Lightning step 1.16x the raw loop in ``make bench``.)

    With ``check_every_n_steps=N > 1`` the flag is only accumulated on the device (with
    the step it first went bad) and read every N steps, at each validation and before
    every checkpoint is written. On a GPU that removes the per-step wait for the device
    (Lightning itself reads the loss back only every ``trainer.log_every_n_steps``); the
    price is that up to N-1 optimizer steps may apply bad values in memory before the run
    stops. No checkpoint is written after them (weights-only checkpoints excepted: those
    skip callback hooks), and the error still names the first bad step.

    ``check_every_n_steps="auto"`` (the default) is 1 on CPUs, where reading the flag costs
    nothing, and ``trainer.log_every_n_steps`` on accelerators (GPUs), so that the flag is read
    at the steps where Lightning reads the logged loss anyway: no step of a GPU run waits for
    the check, and no checkpoint ever holds bad weights.

    Args:
        check_gradients: also check every gradient before each optimizer step.
        check_every_n_steps: how often the host reads the flag (see above): a count >= 1 or ``"auto"``.
    """

    def __init__(self, check_gradients: bool = True, check_every_n_steps: int | str = "auto") -> None:
        super().__init__()
        if check_every_n_steps != "auto" and (not isinstance(check_every_n_steps, int) or check_every_n_steps < 1):
            raise ValueError(f"callbacks.stop_on_non_finite.check_every_n_steps must be an integer >= 1 or 'auto', "
                             f"got {check_every_n_steps!r}")
        self.check_gradients = check_gradients
        self._check_every_n_steps = check_every_n_steps
        self.check_every_n_steps = 1 if check_every_n_steps == "auto" else int(check_every_n_steps)
        self._loss: torch.Tensor | None = None
        # Deferred mode: steps recorded since the last read, and the first bad one among
        # them (1-based, 0 = none yet); both live on the device.
        self._steps_since_read: torch.Tensor | None = None
        self._first_bad: torch.Tensor | None = None
        self._step_at_read = -1  # global step of the last step recorded before the last read
        self._last_recorded_step = -1

    def _where(self, trainer: pl.Trainer) -> str:
        batch = trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1
        ckpt = checkpoint_paths(trainer)["last_ckpt"]
        last = f"; the last good checkpoint is {ckpt}" if ckpt else ""
        return f"at global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch}){last}"

    def _loss_error(self, trainer: pl.Trainer, loss: torch.Tensor) -> NonFiniteLossError:
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        return NonFiniteLossError(
            f"non-finite training loss {loss.float().tolist()} {self._where(trainer)}; last logged {logged}. "
            "Lower the learning rate, check the data, or try trainer.precision=32-true."
        )

    @property
    def deferred(self) -> bool:
        return self.check_every_n_steps > 1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._check_every_n_steps == "auto":
            on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
            self.check_every_n_steps = 1 if on_cpu else max(1, int(trainer.log_every_n_steps))
        self._steps_since_read = self._first_bad = None
        self._step_at_read = self._last_recorded_step = trainer.global_step - 1

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any) -> None:
        self._loss = loss.detach()
        if self.check_gradients:
            return
        if self.deferred:
            self._record(trainer, self._loss.float().sum())
        elif not torch.isfinite(self._loss).all():
            raise self._loss_error(trainer, self._loss)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self.check_gradients:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads, norm_type=2.0) if grads else torch.zeros((), device=pl_module.device)
        flag = total.float()
        if self._loss is not None:
            flag = flag + self._loss.float().sum().to(flag.device)
        if self.deferred:
            self._record(trainer, flag)
            return
        if bool(torch.isfinite(flag)):  # the one host read of the step
            return
        if self._loss is not None and not torch.isfinite(self._loss).all():
            raise self._loss_error(trainer, self._loss)
        bad = [n for n, p in pl_module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            raise NonFiniteLossError(f"non-finite gradients in {len(bad)} parameters (first: {bad[:3]}) {self._where(trainer)}")

    # -- deferred mode ------------------------------------------------------------------------

    def _record(self, trainer: pl.Trainer, flag: torch.Tensor) -> None:
        """Fold one step's flag into the device-side state; read it every N steps."""
        if self._steps_since_read is None:
            self._steps_since_read = torch.zeros((), dtype=torch.long, device=flag.device)
            self._first_bad = torch.zeros((), dtype=torch.long, device=flag.device)
        self._steps_since_read += 1
        newly_bad = (~torch.isfinite(flag)) & (self._first_bad == 0)
        self._first_bad = torch.where(newly_bad, self._steps_since_read, self._first_bad)
        self._last_recorded_step = trainer.global_step
        # Counted in training batches that stepped, as Lightning counts for logging (a GAN's
        # batch makes two optimizer steps): the reads fall on Lightning's logging batches.
        if (trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % self.check_every_n_steps == 0:
            self._read(trainer)

    def _read(self, trainer: pl.Trainer) -> None:
        if self._first_bad is None:
            return
        first = int(self._first_bad)  # the host read
        if first:
            bad_step = self._step_at_read + first
            raise NonFiniteLossError(
                f"non-finite training loss or gradients first at global step {bad_step}, found {self._where(trainer)} "
                f"(callbacks.stop_on_non_finite.check_every_n_steps={self.check_every_n_steps}: the weights in memory "
                "took the bad values since, none were saved). Lower the learning rate, check the data, or try "
                "trainer.precision=32-true; check_every_n_steps=1 stops before the first bad update."
            )
        self._steps_since_read.zero_()
        self._step_at_read = self._last_recorded_step

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._read(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._read(trainer)  # raising here stops the write: no checkpoint holds the bad weights


class EMA(EMAWeightAveraging):
    """Lightning's :class:`EMAWeightAveraging` (when to update, validation on the averaged
    weights, checkpoints holding both) with :class:`~joint_colsr.run.averaging.EMAModel` as the average.

    Same update, ``ema = decay * ema + (1 - decay) * current`` per optimizer step, but fused
    into one ``foreach`` op per dtype and with no device-to-host read per step (torch's
    ``AveragedModel`` makes one, which stalls a GPU loop). Also picklable: Lightning's version
    keeps a closure, so ``trainer.strategy=ddp_spawn`` could not start with it.
    """

    def __init__(self, decay: float = 0.999, use_buffers: bool = True, device: str | None = None,
                 update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None) -> None:
        # Named arguments, not **kwargs: the start-up config check reads the signature, so a
        # misspelled callbacks.ema.<key> fails there instead of being passed on and ignored.
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"callbacks.ema.decay must be in [0, 1], got {decay}")
        super().__init__(decay=decay, use_buffers=use_buffers, device=device, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=update_starting_at_step, update_starting_at_epoch=update_starting_at_epoch)
        self.decay = float(decay)
        self._kwargs.pop("avg_fn", None)  # unpicklable, and EMAModel does the averaging

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Built here, before the strategy places the module, because a resumed checkpoint is
        # loaded into the average before ``on_fit_start``; placed on the module's device there.
        if stage == "fit":
            device = self._device or pl_module.device
            self._average_model = EMAModel(pl_module, decay=self.decay, device=device, use_buffers=self._use_buffers)
            self._swapped = False
            self._raw_after_training: dict[str, torch.Tensor] | None = None

    # A checkpoint must hold the raw weights as ``current_model_state`` (what training resumes
    # from) and the average as ``state_dict`` at any moment: also when it is written while
    # the model holds the average (mid-validation, on a pre-emption signal; after training,
    # when Lightning's on_train_end has copied the average over the raw weights and a
    # ``last.ckpt`` is still due).

    def _swap_models(self, pl_module: pl.LightningModule) -> None:
        super()._swap_models(pl_module)
        self._swapped = not self._swapped

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._raw_after_training = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is None or "current_model_state" not in checkpoint:
            return
        if getattr(self, "_swapped", False):  # model: average; _average_model: raw
            checkpoint["state_dict"], checkpoint["current_model_state"] = checkpoint["current_model_state"], checkpoint["state_dict"]
        elif getattr(self, "_raw_after_training", None) is not None:
            checkpoint["current_model_state"] = self._raw_after_training

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The module is on its device now (and in its memory layout): the average follows it,
        # with any state already loaded from a checkpoint. An explicit ``device`` is kept.
        if self._average_model is not None and self._device is None:
            self._average_model.place_like(pl_module)


def images_to_channels_last(batch: Any) -> Any:
    """Put every floating ``(B, C, H, W)`` tensor of a batch dict in channels-last memory, in place.

    Integer tensors (``rgb_target``, used only by metrics) are left alone. Returns the batch.
    """
    if isinstance(batch, dict):
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.dim() == 4 and value.is_floating_point():
                batch[key] = value.contiguous(memory_format=torch.channels_last)
    return batch


class ChannelsLast(pl.Callback):
    """Keep the model's 4-D weights and the batch's float images in channels-last (NHWC) memory.

    Convolutions on tensor cores and oneDNN run NHWC natively; mixing layouts makes every
    layer transpose. The batch is converted in ``on_*_batch_start``, i.e. after
    :meth:`ColSRDataModule.on_after_batch_transfer` has made the LAB tensors on the
    device (the data module owns that hook). Turned on by ``speed.channels_last=true``.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        images_to_channels_last(batch)

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        images_to_channels_last(batch)

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        images_to_channels_last(batch)

    def on_predict_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        images_to_channels_last(batch)
