"""SLURM's warning signal: write ``last.ckpt`` at a step boundary, requeue the job, exit.

A SLURM job is warned before its time limit (``sbatch --signal``; submitit asks for
``USR2`` ``signal_delay_s`` seconds ahead) and, on clusters that preempt that way, before
preemption. :class:`RequeueOnSlurmSignal` turns that warning into: finish the current
training step, write ``<run dir>/checkpoints/last.ckpt`` (all ranks together; rank 0
writes), requeue, exit. The requeued job runs the same command in the same run
directory, and ``auto_resume`` continues from that checkpoint, so the run ends with the
weights an uninterrupted run would have (``tests/ops/test_slurm.py`` checks it bit for bit).

Why not Lightning's own ``SLURMEnvironment(auto_requeue=True)`` handler: it saves
``hpc_ckpt_N.ckpt`` from inside the signal handler, wherever the step happens to be
(after ``optimizer.step()`` but before the loop counted the batch, the resumed run
repeats it), and ``auto_resume`` would have to look for a second file. Installing a
handler first makes Lightning leave that signal alone.

Signals handled (only when Lightning runs under SLURM):

* submitit's (``SUBMITIT_PREEMPT_SIGNAL``, default ``USR2``) inside a submitit job
  (``hydra/launcher=slurm``): after the checkpoint, submitit's own handler runs; it
  resubmits the job (counting timeouts against ``max_num_timeout``) and exits.
* ``USR1`` (Lightning's convention, for a plain ``sbatch --signal=USR1@120`` script):
  after the checkpoint, rank 0 runs ``scontrol requeue`` and every rank exits.

``SIGTERM`` (a preemption without warning, ``scancel``) is left to Lightning's handler.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint

from joint_colsr.run.checkpointing import resume_checkpoint_path
from joint_colsr.run.syncs import logs_after

log = logging.getLogger(__name__)

#: How long ranks other than 0 wait for SLURM to end them after rank 0 requeued the job
#: (SLURM sends SIGTERM, which submitit ignores, then SIGKILL after its KillWait).
REQUEUE_WAIT_S = 120.0


def _submitit_signal() -> signal.Signals | None:
    """The signal submitit's job handler listens to, when this process is a submitit SLURM job."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for an array task, else the job id."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


class RequeueOnSlurmSignal(pl.Callback):
    """Checkpoint-and-requeue on SLURM's warning signal; does nothing outside SLURM.

    Args:
        sync_every_n_steps: with several ranks, how often they decide together (a 1-element
            all-reduce and a host read) whether one of them got the signal, so that all stop
            after the same step: ``None`` (default) after each logging batch (every
            ``trainer.log_every_n_steps``, where Lightning reads the logged values anyway: no
            extra wait on a GPU), N after every N-th batch. One process decides after every
            step at no cost.
    """

    def __init__(self, sync_every_n_steps: int | None = None) -> None:
        if sync_every_n_steps is not None and sync_every_n_steps < 1:
            raise ValueError(f"sync_every_n_steps must be >= 1 or null (at logging steps), got {sync_every_n_steps}")
        self.sync_every_n_steps = sync_every_n_steps
        self.requested: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not SLURMEnvironment.detect():  # Lightning's own test (srun / sbatch, not salloc bash)
            return
        signals = {signal.SIGUSR1}
        if (sig := _submitit_signal()) is not None:
            signals.add(sig)
        for sig in signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._note)
        # Run after every other callback's on_train_batch_end (EMA updates there), so the
        # checkpoint holds the step's complete state. A new list: the hook loop iterates the old one.
        trainer.callbacks = [c for c in trainer.callbacks if c is not self] + [self]
        log.info("SLURM job %s: on %s, write last.ckpt after the current step and requeue",
                 os.environ.get("SLURM_JOB_ID"), "/".join(s.name for s in sorted(signals)))

    def _note(self, signum: int, frame: FrameType | None) -> None:
        # Only a note: the checkpoint is written between steps, where the loop state is whole.
        self.requested = signal.Signals(signum)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._previous:
            return
        requested = self.requested is not None
        if trainer.world_size > 1:
            if not self.decides_after_this_batch(trainer):
                return
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        sig = self.requested or _submitit_signal() or signal.SIGUSR1  # a rank yet to see it follows the others
        path = resume_checkpoint_path(trainer.default_root_dir)
        for callback in trainer.checkpoint_callbacks:
            # The ModelCheckpoint whose last.ckpt this is records it as its own: resumed, it
            # goes on replacing that file instead of starting last-v1.ckpt beside it.
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath \
                    and Path(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION) == path:
                callback.last_model_path = str(path)
        trainer.save_checkpoint(path)  # collective; rank 0 writes
        trainer.strategy.barrier("requeue")
        log.warning("%s received: wrote %s at step %d; requeueing", sig.name, path, trainer.global_step)
        self._requeue_and_exit(sig, trainer)

    def decides_after_this_batch(self, trainer: pl.Trainer) -> bool:
        """Whether the ranks decide together after the current training batch (called in
        ``on_train_batch_end``, before Lightning counts the batch as stepped). The same on
        every rank: it depends on the batch count alone, never on ``should_stop``."""
        return logs_after(trainer, trainer.fit_loop.epoch_loop._batches_that_stepped + 1, self.sync_every_n_steps)

    def _requeue_and_exit(self, sig: signal.Signals, trainer: pl.Trainer) -> None:
        # The requeue ends this job with SIGTERM to each of its processes. A data-loading
        # worker that dies of it before this process has exited must not turn the exit into
        # a training error (PyTorch's SIGCHLD handler raises "DataLoader worker ... killed").
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # The path depends on the job (submitit or not), never on which signal a rank saw:
        # every rank must take the same one.
        submitit_sig = _submitit_signal()
        submitit_handler = self._previous.get(submitit_sig) if submitit_sig is not None else None
        if callable(submitit_handler):
            # On rank 0 it resubmits the job (or raises once max_num_timeout is spent) and
            # exits; on the others it does nothing. They wait for the requeue to end them:
            # exiting first would break rank 0's connections while it is still requeueing.
            submitit_handler(submitit_sig, None)
            deadline = time.monotonic() + REQUEUE_WAIT_S
            while time.monotonic() < deadline:
                time.sleep(0.5)
        else:
            if trainer.is_global_zero:
                job = slurm_job_id()
                done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
                if done.returncode != 0:
                    log.error("scontrol requeue %s failed: %s", job, done.stderr.strip())
            trainer.strategy.barrier("requeued")
        raise SystemExit(f"requeued after {sig.name}")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

