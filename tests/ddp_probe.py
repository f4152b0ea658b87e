"""A callback the DDP tests add to real runs (``+callbacks.probe._target_=tests.ddp_probe.RecordWeights``):
each rank saves its module's parameters after fit to ``<out_dir>/rank<N>.pt``, and before
the first step to ``<out_dir>/rank<N>_start.pt``, for the test to compare. Parameters only:
buffers such as BatchNorm's running statistics are each rank's own under DDP (rank 0's are
broadcast at every forward, then each rank updates its copy)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch


class RecordWeights(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, suffix: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.named_parameters()}
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}{suffix}.pt")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, "_start")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, "")
