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


class RecordHostReads(pl.Callback):
    """Records this process's host reads (:class:`~joint_colsr.run.syncs.HostReadRecorder`)
    from the start of training to its end, by training-loop iteration, into
    ``<out_dir>/reads_rank<N>.json``: ``{iteration: [{"call", "where", "deliberate"}, ...]}``.

    Iteration ``k`` runs from the start of the loop's ``advance`` for batch ``k``
    (:func:`~joint_colsr.run.syncs.hook_training_iterations`) to the start of the next one:
    the fetch of the batch after, the transfer and ``on_after_batch_transfer`` of batch ``k``,
    its step, hooks and logging, then ``on_advance_end`` (validation when due). Reads before
    the first iteration (start-up) are under ``-1``. ``tests/run/test_host_syncs.py`` runs it
    in process (``+callbacks.probe``) and on each DDP rank."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.recorder = None
        self.iteration = -1
        self._undo = None

    def _start(self, trainer: pl.Trainer) -> None:
        self.iteration += 1

    def _end(self, trainer: pl.Trainer) -> None:
        pass  # the iteration lasts until the next one starts (its on_advance_end included)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from joint_colsr.run.syncs import HostReadRecorder, hook_training_iterations

        self.iteration = -1
        self._undo = hook_training_iterations(trainer, self._start, self._end)
        self.recorder = HostReadRecorder(step_of=lambda: self.iteration)
        self.recorder.__enter__()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import json

        self.recorder.__exit__(None, None, None)
        self._undo()
        reads = {str(b): [{"call": r.call, "where": r.where, "deliberate": r.deliberate} for r in rs]
                 for b, rs in self.recorder.per_step().items()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"reads_rank{trainer.global_rank}.json").write_text(json.dumps(reads, indent=1))
