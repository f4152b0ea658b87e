"""Lightning callbacks of the suite (the rest come from Lightning itself)."""

from __future__ import annotations

import logging
from pathlib import Path

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

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
