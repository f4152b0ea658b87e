"""Checkpoints that survive crashes, and where the last one goes (resume.py picks the one to resume from)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from joint_colsr.run.moved import upgrade_class_paths
from joint_colsr.run.outputs import atomic_write

log = logging.getLogger(__name__)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, permissions); the message says what to do."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint through :func:`joint_colsr.run.outputs.atomic_write` (a temporary file
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
        try:
            with atomic_write(path, "wb") as handle:
                torch.save(checkpoint, handle)
        except (OSError, RuntimeError) as err:  # a full disk reads "enforce fail at inline_container.cc" from torch
            if not isinstance(err, OSError) and "inline_container" not in str(err) and "PytorchStreamWriter" not in str(err):
                raise  # not the write: e.g. a killed loader worker noticed (by its signal handler) during the save
            reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0][:160]
            raise CheckpointWriteError(f"could not write checkpoint {path} ({reason}); the previous checkpoint there is "
                                       "intact: free disk space (or fix permissions) and rerun the same hydra.run.dir "
                                       "to resume") from None

    def remove_checkpoint(self, path: Any) -> None:
        fs = get_filesystem(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint's dict, its tensors memory-mapped (not read): the one reader of
    ``.ckpt`` files for resuming, loading systems and composing cascades.

    Raises:
        ValueError: the file is not a checkpoint torch can read, or holds no ``state_dict``
            (a text file, another tool's pickle, a truncated copy); the message names it.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a foreign file
        raise ValueError(f"{path} is not a checkpoint torch can read ({type(err).__name__}); expected a .ckpt "
                         "written by joint_colsr.train (a text file, another tool's file or a truncated copy?)") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"{path} is not a Lightning training checkpoint (no state_dict)")
    for key in ("run_config", "hyper_parameters"):  # class paths saved before a module moved
        upgrade_class_paths(state.get(key))
    return state


def resume_checkpoint_path(output_dir: str | os.PathLike) -> Path:
    """``<run dir>/checkpoints/last.ckpt``: where the last checkpoint goes and resuming looks."""
    return Path(output_dir) / "checkpoints" / "last.ckpt"


class LastCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` that also writes ``last.ckpt`` at the end of every epoch,
    whatever else triggers it (``every_n_train_steps=N`` adds step saves). Lightning, given
    only the step trigger, stops saving at epoch ends (and refuses both triggers together);
    with ``save_top_k=0`` it saves ``last`` only when a top-k file was written.

    The end-of-epoch save is written even when a save at the same step came before it, and
    no step save is made on an epoch's last batch: a checkpoint holding "last batch done,
    epoch not ended" resumes in Lightning 2.6 without the next epoch's start (its counters
    stay one epoch behind, its epoch-end LR step is skipped), so a second resume from a later
    checkpoint trains an extra epoch. The epoch-end save that follows covers that step."""

    def _save_last_now(self, trainer: Any) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.save_last and not (trainer.fast_dev_run or trainer.sanity_checking):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))  # the epoch's end state, always

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking and trainer.fit_loop.epoch_loop._num_ready_batches_reached():
            self._save_last_now(trainer)  # the epoch's own validation (rewritten at the epoch's end)


def checkpoint_paths(trainer: Any) -> dict[str, str | None]:
    """``best_ckpt`` (by the monitored metric) and ``last_ckpt`` among the trainer's ModelCheckpoints:
    a ``save_last`` file, or the one checkpoint of an unmonitored callback (``conf/callbacks/default.yaml``
    writes ``last.ckpt`` that way)."""
    best = last = None
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) and cb.best_model_path and best is None:
            best = cb.best_model_path
        if last is None:
            last = getattr(cb, "last_model_path", "") or (cb.best_model_path if getattr(cb, "monitor", 0) is None else "") or None
    return {"best_ckpt": best, "last_ckpt": last}
