"""Fault injection for reliability tests and the red-team script: a callback that sends a real
signal to its own process at a chosen point of training (``+callbacks.fault._target_=...``)."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl


class SignalAt(pl.Callback):
    """Send ``signum`` to this process once, after training step ``step`` (global, 1-based count
    of optimizer steps done) or after validation batch ``val_batch`` of epoch ``epoch``."""

    def __init__(self, signum: str = "SIGTERM", step: int | None = None, epoch: int = 0, val_batch: int | None = None) -> None:
        self.signum = signal.Signals[signum]
        self.step, self.epoch, self.val_batch = step, epoch, val_batch
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
