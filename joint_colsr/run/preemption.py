"""Pre-emption: SIGTERM or SIGUSR1 during training saves a resumable checkpoint, records the
run as interrupted and exits non-zero. The one place that handles these signals.

How it sits on Lightning (2.6):

* Lightning's signal connector, registered inside ``trainer.fit``, already turns SIGTERM
  into ``trainer.received_sigterm``; the training and validation loops then raise
  ``SIGTERMException`` at the next batch boundary (so the weights, the optimizer and the
  loop counters are consistent). That exception is a ``SystemExit`` *with code 0*: left
  alone, the process exits "successfully" with nothing saved.
* :func:`handle_preemption` (around ``trainer.fit``) adds SIGUSR1 to that path, through
  Lightning's own SIGTERM notifier (so under DDP rank 0 broadcasts it the same way), and
  records which signal came. Under SLURM, SIGUSR1 (and submitit's USR2) is left to the
  ``callbacks.slurm_requeue`` callback (:mod:`joint_colsr.run.slurm_requeue`: ``last.ckpt``
  at a step boundary, then requeue); without that callback Lightning's ``auto_requeue``
  takes it and writes ``<run dir>/hpc_ckpt_N.ckpt``, which the resume finder reads too
  (``joint_colsr.run.resume.resume_candidates``), so a requeued job resumes from whichever
  checkpoint is furthest.
* :class:`PreemptionCheckpoint` (a callback) writes ``<run dir>/checkpoints/last.ckpt`` in
  ``on_exception`` for that exception only, through the trainer's checkpoint IO (atomic
  rename), with the data loader's position (``ResumableDataLoader``): rerunning the same
  ``hydra.run.dir`` continues at the next batch (``auto_resume=true``) or
  ``ckpt_path=<run dir>/checkpoints/last.ckpt`` does explicitly.
* Under DDP, Lightning (2.6) broadcasts rank 0's SIGTERM flag before *every* training step:
  a tensor made on the device and read back, a host sync per step per rank
  (Lightning-AI/pytorch-lightning#21487). :func:`broadcast_sigterm_at_logging_steps` lets
  it run only right after each logging step (every ``trainer.log_every_n_steps``), where
  Lightning has just read the logged values anyway. A SIGTERM that reaches every rank (a
  scheduler's) still stops each at its next batch boundary (Lightning's own check); one
  that reaches rank 0 alone is passed on within ``log_every_n_steps`` steps.
* ``train`` then writes ``metrics.json`` with ``"status": "interrupted"`` and raises
  :class:`TrainingInterrupted`; the Hydra callback :class:`ExitOnInterruption` (after the
  sweep summary recorded the job as INTERRUPTED) ends the process with ``128 + signal``
  (143 for SIGTERM, 138 for SIGUSR1), so a scheduler sees a failed job, not a finished one,
  and a sweep starts no further job.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning.pytorch as pl
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback as HydraCallback
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from joint_colsr.run.syncs import deliberate_sync, logs_after

log = logging.getLogger(__name__)

#: Signals that ask a training run to stop and save (schedulers send SIGTERM before a kill;
#: SLURM's ``--signal=USR1@T`` sends SIGUSR1 T seconds before the end of the allocation).
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def broadcast_sigterm_at_logging_steps(trainer: pl.Trainer) -> bool:
    """Make the training loop's per-step SIGTERM broadcast (DDP, Lightning 2.6) run only
    before the first step and right after each logging step; ``False`` (nothing changed)
    with one process or a Lightning without that broadcast."""
    loop = trainer.fit_loop.epoch_loop
    if getattr(type(loop), "_broadcast_sigterm_tensor", None) is None or trainer.world_size <= 1:
        return False
    loop._broadcast_sigterm_tensor = _BroadcastAfterLoggingSteps(trainer)
    return True


class _BroadcastAfterLoggingSteps:
    """The loop's ``_broadcast_sigterm_tensor``, run only when the batch before was a logging
    one (it is called before a batch; before the first one too). A class, not a closure:
    ``ddp_spawn`` pickles the trainer."""

    def __init__(self, trainer: pl.Trainer) -> None:
        self.trainer = trainer

    def __call__(self) -> None:
        loop = self.trainer.fit_loop.epoch_loop
        if logs_after(self.trainer, loop._batches_that_stepped):
            # It opens the next iteration's advance, inside the sync checks' window: a read on purpose.
            with deliberate_sync("DDP SIGTERM broadcast after a logging step"):
                type(loop)._broadcast_sigterm_tensor(loop)


class TrainingInterrupted(Exception):
    """Training stopped on a pre-emption signal after saving a checkpoint to resume from.

    Attributes:
        signum: the signal received.
        ckpt_path: the checkpoint that resumes the run (``None`` if none could be written).
        exit_code: ``128 + signum``, the shell's convention for "ended by this signal".
    """

    def __init__(self, signum: int, ckpt_path: str | None, global_step: int) -> None:
        self.signum = int(signum)
        self.ckpt_path = ckpt_path
        self.global_step = global_step
        self.exit_code = 128 + self.signum
        name = signal.Signals(self.signum).name
        where = (f"saved {ckpt_path}; rerun the same hydra.run.dir to continue (auto_resume=true), "
                 f"or pass ckpt_path={ckpt_path}") if ckpt_path else "no checkpoint could be written"
        super().__init__(f"training interrupted by {name} at global step {global_step}: {where}")


class PreemptionCheckpoint(pl.Callback):
    """On a pre-emption signal, save a resumable checkpoint to ``dirpath/last.ckpt``.

    Only Lightning's ``SIGTERMException`` triggers it (an error such as a NaN loss must not
    write over the last good checkpoint). ``saved_path`` is set once written.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.saved_path: str | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking or trainer.fast_dev_run:
            return
        path = self.dirpath / "last.ckpt"
        try:
            trainer.save_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - e.g. a full disk: report, keep the older checkpoint
            log.error("pre-emption: could not write %s (%s); the previous checkpoint stays", path, err)
            return
        self.saved_path = str(path)
        log.warning("pre-emption: saved %s at global step %d", path, trainer.global_step)


class _SignalRecord:
    """Which pre-emption signal arrived first (SIGTERM if Lightning's handler alone saw one)."""

    def __init__(self) -> None:
        self.signum: int | None = None


@contextmanager
def handle_preemption(trainer: pl.Trainer) -> Iterator[_SignalRecord]:
    """Install the SIGTERM/SIGUSR1 handlers for the duration of ``trainer.fit``.

    Ours are installed first; Lightning's connector then composes its SIGTERM notifier with
    them (it keeps existing handlers) and restores them at teardown; we restore the
    originals on exit. Only the main thread may install handlers (Python's rule): elsewhere
    this does nothing and Lightning's own handling stays.
    """
    record = _SignalRecord()
    if threading.current_thread() is not threading.main_thread():
        yield record
        return
    environment = trainer._accelerator_connector.cluster_environment
    slurm_requeue = isinstance(environment, SLURMEnvironment) and environment.auto_requeue

    def on_signal(signum: int, frame: Any) -> None:
        if record.signum is None:
            record.signum = signum
        if signum != signal.SIGTERM:
            # Same path as SIGTERM: Lightning's notifier sets received_sigterm (and broadcasts under DDP).
            trainer._signal_connector._sigterm_notifier_fn(signum, frame)

    handled = [signal.SIGTERM] + ([] if slurm_requeue else [signal.SIGUSR1])
    previous = {s: signal.getsignal(s) for s in handled}
    for s in handled:
        signal.signal(s, on_signal)
    try:
        yield record
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def ignore_preemption_signals_in_worker() -> None:
    """For DataLoader workers: a scheduler signals the whole process group, and a worker
    killed by SIGTERM would crash the main process before it can save. The main process
    ends its workers itself."""
    for s in PREEMPTION_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class ExitOnInterruption(HydraCallback):
    """Hydra callback (first in ``conf/hydra/default.yaml``: Hydra runs ``on_job_end`` in
    reverse order, so this runs last): a job that ended in
    :class:`TrainingInterrupted` ends the process with ``128 + signal`` after the callbacks
    before it (the sweep summary) recorded it. A local sweep starts no further job: the
    process was asked to stop."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        error = getattr(job_return, "_return_value", None)
        if job_return.status == JobStatus.FAILED and isinstance(error, TrainingInterrupted):
            log.error("%s", error)
            raise SystemExit(error.exit_code)
