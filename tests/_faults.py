"""Fault injection for reliability tests and the red-team script: a callback that sends a real
signal to its own process at a chosen point of training (``+callbacks.fault._target_=...``)."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl


class SignalAt(pl.Callback):
    """Send ``signum`` to this process once, after training step ``step`` (global, 1-based count
    of optimizer steps done), after validation batch ``val_batch`` of epoch ``epoch``, or (with
    ``epoch_end=True``) at the end of epoch ``epoch``, after its validation and before the
    checkpoint callbacks' end-of-epoch saves."""

    def __init__(self, signum: str = "SIGTERM", step: int | None = None, epoch: int = 0, val_batch: int | None = None,
                 epoch_end: bool = False) -> None:
        self.signum = signal.Signals[signum]
        self.step, self.epoch, self.val_batch, self.epoch_end = step, epoch, val_batch, epoch_end
        self.sent = False

    def _send(self) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.step is not None and trainer.global_step == self.step:
            self._send()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if (self.val_batch is not None and not trainer.sanity_checking and trainer.current_epoch == self.epoch
                and batch_idx == self.val_batch):
            self._send()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.epoch_end and trainer.current_epoch == self.epoch:
            self._send()


class KillLoaderWorkers(pl.Callback):
    """SIGKILL every data-loading worker process once, after training step ``step``: what the
    kernel's out-of-memory killer does to a worker (needs ``data.num_workers`` > 0)."""

    def __init__(self, step: int = 1) -> None:
        self.step, self.sent = step, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import multiprocessing

        if not self.sent and trainer.global_step == self.step:
            self.sent = True
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)
