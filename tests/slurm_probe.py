"""A callback the SLURM tests add to real jobs (``+callbacks.probe._target_=tests.slurm_probe.RecordRanks``):
each rank writes what it saw to ``<out_dir>/rank<N>.json`` for the test to check."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class RecordRanks(pl.Callback):
    """Per rank: the cluster environment Lightning chose, rank / world size, the sample
    indices of every training epoch and of validation, the reduced ``val/psnr`` and the
    checkpoints this process itself wrote (its ``checkpoint_io`` is wrapped)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict[str, Any] = {"train_indices": {}, "val_indices": [], "saved": [], "val_psnr": []}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.record.update(
            environment=type(trainer.strategy.cluster_environment).__name__,
            global_rank=trainer.global_rank,
            world_size=trainer.world_size,
            slurm_procid=os.environ.get("SLURM_PROCID"),
            pid=os.getpid(),
        )
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def recording_save(checkpoint: dict, path: Any, *args: Any, **kwargs: Any) -> None:
            self.record["saved"].append(Path(path).name)
            self._write()
            save(checkpoint, path, *args, **kwargs)

        io.save_checkpoint = recording_save

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        epoch = str(trainer.current_epoch)
        self.record["train_indices"].setdefault(epoch, []).extend(int(i) for i in batch["index"])

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self.record["val_indices"].extend(int(i) for i in batch["index"])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "val/psnr" in trainer.callback_metrics:
            self.record["val_psnr"].append(float(trainer.callback_metrics["val/psnr"]))
        self._write()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write()

    def _write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rank = self.record.get("global_rank", 0)
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps(self.record, indent=1))


class PauseForSignal(pl.Callback):
    """In the first run of a SLURM job only: after training step ``step``, write
    ``<marker>`` (holding the job id) and wait up to ``wait_s`` for SLURM's warning signal
    (noted by :class:`joint_colsr.run.slurm_requeue.RequeueOnSlurmSignal`), so that the test can
    signal a job that is surely mid-training. The requeued run (``SLURM_RESTART_COUNT`` set)
    records its restart count and does not pause."""

    def __init__(self, step: int, marker: str, wait_s: float = 60.0) -> None:
        self.step = step
        self.marker = Path(marker)
        self.wait_s = wait_s

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        runs = self.marker.with_suffix(".runs")
        with runs.open("a") as f:
            f.write(json.dumps({"restart_count": os.environ.get("SLURM_RESTART_COUNT"), "global_step": trainer.global_step}) + "\n")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        import time

        from joint_colsr.run.slurm_requeue import RequeueOnSlurmSignal, slurm_job_id

        if trainer.global_step != self.step or os.environ.get("SLURM_RESTART_COUNT"):
            return
        (requeue,) = [c for c in trainer.callbacks if isinstance(c, RequeueOnSlurmSignal)]
        self.marker.write_text(slurm_job_id())
        deadline = time.monotonic() + self.wait_s
        while requeue.requested is None and time.monotonic() < deadline:
            time.sleep(0.05)
