"""Checkpoints that survive crashes, and finding the one to resume from."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from joint_colsr.outputs import atomic_write
from joint_colsr.resume import find_resume_checkpoint  # noqa: F401 - resume logic lives in resume.py

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint through :func:`joint_colsr.outputs.atomic_write` (a temporary file
    *in the same folder*, fsync, then rename).

    Lightning's own writer stages through fsspec's transaction, whose temporary file lives
    in the system temp folder: when that is another filesystem (a node-local ``/tmp`` and
    an NFS run directory, common on clusters) the final move is a copy, and a kill during
    it leaves a truncated ``last.ckpt``. A rename within one folder is atomic on POSIX, so
    here a reader sees the old file or the new one, never half of one. Remote URLs
    (``s3://`` ...) fall back to Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_write(path, "wb") as handle:
            torch.save(checkpoint, handle)

    def remove_checkpoint(self, path: Any) -> None:
        fs = get_filesystem(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)


class LastCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` whose ``every_n_train_steps=N`` *adds* step saves to the
    end-of-epoch save instead of replacing it (Lightning refuses both triggers together and,
    given only the step one, stops saving at epoch ends: the last steps of an epoch and of
    training would then never reach ``last.ckpt``). Saves at the same step are not repeated."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._every_n_train_steps and not self._train_time_interval:
            self._every_n_epochs = 1


def checkpoint_paths(trainer: Any) -> dict[str, str | None]:
    """``best_ckpt`` (by the monitored metric) and ``last_ckpt`` among the trainer's ModelCheckpoints."""
    best = last = None
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) and cb.best_model_path and best is None:
            best = cb.best_model_path
        if getattr(cb, "last_model_path", "") and last is None:
            last = cb.last_model_path
    return {"best_ckpt": best, "last_ckpt": last}
