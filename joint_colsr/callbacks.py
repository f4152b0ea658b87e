"""Lightning callbacks of the suite (the rest come from Lightning itself)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from joint_colsr.checkpointing import checkpoint_paths
from joint_colsr.viz import colorization_rows, make_grid, save_png

log = logging.getLogger(__name__)


class ValidationImageGrid(pl.Callback):
    """After each validation epoch, save (and log) a grid of the first validation images.

    Columns: input L* upscaled (bicubic) | prediction (ground-truth L* + predicted a*b*) |
    ground truth. Files: ``DIR/val_epoch{NNN}.png`` and ``DIR/val_latest.png``. Loggers that
    take images (wandb) get it as ``val/examples``.

    Args:
        dirpath: where PNGs go.
        num_images: rows of the grid.
    """

    def __init__(self, dirpath: str, num_images: int = 8) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self.last_path: Path | None = None

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        examples = getattr(pl_module, "val_examples", None)
        if not examples or trainer.sanity_checking:
            return
        rows = colorization_rows(
            examples["l_lowres"], examples["l_highres"], examples["ab_pred"], examples["rgb_target"], limit=self.num_images
        )
        grid = make_grid(rows)
        epoch = trainer.current_epoch
        self.last_path = save_png(grid, self.dirpath / f"val_epoch{epoch:03d}.png")
        save_png(grid, self.dirpath / "val_latest.png")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(
                    key="val/examples", images=[grid], step=trainer.global_step,
                    caption=["input L* (bicubic) | prediction | ground truth"],
                )


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or Inf; the message names the step and the values."""


class StopOnNonFinite(pl.Callback):
    """Stop training on a NaN/Inf loss or gradient, *before* the optimizer step.

    The weights are never updated with the bad values, and no checkpoint is written after
    them, so the last checkpoint on disk stays the last good one. The error names the
    global step, the epoch, the batch and the loss values.

    Args:
        check_gradients: also check every gradient before each optimizer step.
    """

    def __init__(self, check_gradients: bool = True) -> None:
        super().__init__()
        self.check_gradients = check_gradients
        self._last_loss: float | None = None

    def _where(self, trainer: pl.Trainer) -> str:
        batch = trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1
        ckpt = checkpoint_paths(trainer)["last_ckpt"]
        last = f"; the last good checkpoint is {ckpt}" if ckpt else ""
        return f"at global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch}){last}"

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any) -> None:
        value = loss.detach().float()
        if not torch.isfinite(value).all():
            logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
            raise NonFiniteLossError(
                f"non-finite training loss {value.tolist()} {self._where(trainer)}; last logged {logged}. "
                "Lower the learning rate, check the data, or try trainer.precision=32-true."
            )
        self._last_loss = float(value.mean())

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self.check_gradients:
            return
        bad = [n for n, p in pl_module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            raise NonFiniteLossError(
                f"non-finite gradients in {len(bad)} parameters (first: {bad[:3]}) {self._where(trainer)}; "
                f"loss was {self._last_loss}"
            )
