"""A run directory's history: which checkpoint a run resumes from, whether the new config may
resume it, one process at a time, and records that are kept, never silently replaced.

* :func:`find_resume_checkpoint` picks, among ``checkpoints/last.ckpt``, ``last-v*.ckpt``,
  ``latest*.ckpt`` and Lightning's SLURM requeue files ``hpc_ckpt_*.ckpt``, the one that
  loads and is furthest (global step); a damaged file is named and skipped.
* :func:`check_resume_config`: the keys that cannot change mid-run (the model, the data and
  its sizes, the seed, numerics) fail with one sentence naming both values; the others
  (``trainer.max_epochs``, workers, callbacks, loggers ...) are applied and logged. The
  run's config travels in every checkpoint (``run_config``, :class:`RecordRunConfig`).
* :func:`finished` says whether a checkpoint already reached the configured end: a rerun
  of a finished run reports that and leaves every file as it is.
* :func:`lock_run_dir`: a second process in the same run directory fails at start-up.
* :func:`keep_history`: ``metrics.json`` keeps earlier attempts under ``attempts``; a
  resumed run's ``csv/metrics.csv`` of the earlier attempt is kept as
  ``csv/metrics.<time>.csv``; starting over (``auto_resume=false``) in a used run
  directory moves its checkpoints, metrics and logs to ``previous/<time>/``.
"""

from __future__ import annotations

import fcntl
import inspect
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning.pytorch as pl

from joint_colsr.run.checkpointing import read_checkpoint
from joint_colsr.run.config_checks import ConfigError

log = logging.getLogger(__name__)

#: Keys a resumed run may not change: what was trained, on what, and how the numbers are made.
FIXED = ("model", "data", "seed", "trainer.precision", "trainer.accumulate_grad_batches",
         "trainer.gradient_clip_val", "trainer.gradient_clip_algorithm")
#: Keys under FIXED that may change: how the same data is read, and what validation shows.
CHANGEABLE = ("data.num_workers", "data.pin_memory", "data.cache", "data.cache_verify", "data.cache_gather_threads", "data.val_views")


class RecordRunConfig(pl.Callback):
    """Store the run's resolved config in every checkpoint (``checkpoint["run_config"]``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["run_config"] = self.config


def resume_candidates(output_dir: str | Path) -> list[Path]:
    """The checkpoints of a run directory a resume may start from, preferred first when
    equally far: ``checkpoints/last.ckpt``, ``last-v*.ckpt`` (Lightning's name when another
    attempt's ``last.ckpt`` was there), ``latest*.ckpt``, then ``hpc_ckpt_*.ckpt`` (written by
    Lightning's SLURM auto-requeue in the run directory)."""
    output_dir = Path(output_dir)
    ckpts = output_dir / "checkpoints"
    found = [ckpts / "last.ckpt", *sorted(ckpts.glob("last-v*.ckpt")), *sorted(ckpts.glob("latest*.ckpt")),
             *sorted(output_dir.glob("hpc_ckpt_*.ckpt"))]
    # Then every other checkpoint of the run (best-*.ckpt ...): full training states too, so a
    # damaged last.ckpt falls back to the furthest of them instead of starting over.
    found += [p for p in sorted(ckpts.glob("*.ckpt")) if p not in found]
    return [p for p in found if p.is_file()]


def load_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's dict (tensors memory-mapped, not read); ``ConfigError`` naming the file
    when it is not a checkpoint of this suite (text, another tool's pickle, truncated)."""
    try:
        state = read_checkpoint(path)
    except ValueError as err:
        raise ConfigError(f"ckpt_path={err}") from None
    if "global_step" not in state:
        raise ConfigError(f"ckpt_path={path} is not a Lightning training checkpoint (no global_step)")
    return state


def find_resume_checkpoint(output_dir: str | Path, set_aside_damaged: bool = False) -> Path | None:
    """The furthest checkpoint of the run directory that loads (see :func:`resume_candidates`), or ``None``.

    A damaged candidate is named in a warning; with ``set_aside_damaged`` it is renamed
    ``<name>.damaged-<time>`` (kept, but never read or replaced again), and when the run
    resumes from another file than ``last.ckpt`` the warning says which, and at which step.
    """
    best: tuple[int, Path] | None = None
    damaged = []
    for path in resume_candidates(output_dir):
        try:
            step = int(load_state(path)["global_step"])
        except ConfigError as err:
            log.warning("not resuming from %s: %s", path, err)
            damaged.append(path)
            continue
        if best is None or step > best[0]:
            best = (step, path)
    if set_aside_damaged and _is_main_process():
        for path in damaged:
            kept = path.with_name(f"{path.name}.damaged-{_stamp()}")
            path.rename(kept)
            log.warning("set the damaged %s aside as %s", path.name, kept.name)
    if damaged and best is not None:
        log.warning("resuming from %s (global step %d), the furthest intact checkpoint of %s", best[1].name, best[0], output_dir)
    return best[1] if best else None


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _constructor_default(current: dict[str, Any], key: str) -> tuple[bool, Any]:
    """``(True, default)`` when ``key`` names an argument of its parent node's ``_target_``
    that has a default; ``(False, None)`` otherwise (no target, not importable, no default)."""
    *parents, name = key.split(".")
    node: Any = current
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    target = node.get("_target_") if isinstance(node, dict) else None
    if not isinstance(target, str):
        return False, None
    try:
        from hydra.utils import get_object

        parameter = inspect.signature(get_object(target)).parameters.get(name)
    except Exception:  # an unimportable target is reported where the run builds it, not here
        return False, None
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return False, None
    return True, parameter.default


def check_resume_config(saved: dict[str, Any] | None, current: dict[str, Any], ckpt_path: str | Path) -> list[str]:
    """Compare the run's config with the checkpoint's; return the changes applied (logged).

    Raises:
        ConfigError: one sentence naming the key, both values and the ways out.
    """
    if not saved:
        log.info("%s holds no run config (written before run configs were recorded): not compared", ckpt_path)
        return []
    old, new = _flatten(saved), _flatten(current)
    for key in ("model._target_", "model.net._target_"):  # another model: say so before any of its keys
        if old.get(key) != new.get(key):
            raise ConfigError(
                f"cannot resume {ckpt_path} with another model: the run trained {key}={old.get(key, '<unset>')!r}, this "
                f"config asks for {new.get(key, '<unset>')!r}; pick that run's model= to continue, or auto_resume=false "
                "(or another hydra.run.dir, and no ckpt_path) to start over"
            )
    applied = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(("paths.", "hydra.")) or key in ("ckpt_path", "auto_resume"):
            continue
        before, after = old.get(key, "<unset>"), new.get(key, "<unset>")
        if before == after:
            continue
        if key not in old:
            # A key added to the config after this run was written, set to its constructor
            # default, is what the run used: not a change.
            has_default, default = _constructor_default(current, key)
            if has_default and default == after:
                continue
        if _under(key, FIXED) and not _under(key, CHANGEABLE):
            raise ConfigError(
                f"cannot resume {ckpt_path} with {key}={after!r}: the run was trained with {key}={before!r} and it "
                f"cannot change mid-run; set {key}={before!r} to continue, or auto_resume=false (or another "
                "hydra.run.dir, and no ckpt_path) to start over"
            )
        applied.append(f"{key}: {before!r} -> {after!r}")
    for change in applied:
        log.info("resume: applying %s", change)
    return applied


def finished(state: dict[str, Any], max_epochs: int | None, max_steps: int | None, samples: int | None = None) -> bool:
    """Whether a checkpoint already reached ``trainer.max_epochs`` / ``trainer.max_steps`` or
    ``callbacks.sample_budget.samples`` (:class:`~joint_colsr.run.callbacks.TrainingSampleBudget`)."""
    if samples is not None:
        seen = [v.get("seen", 0) for k, v in state.get("callbacks", {}).items()
                if str(k).startswith("TrainingSampleBudget") and isinstance(v, dict)]
        if seen and int(seen[0]) >= int(samples):
            return True
    fit = state.get("loops", {}).get("fit_loop", {})
    progress = fit.get("epoch_progress", {}).get("current", {})
    epochs = progress.get("processed")
    if epochs is not None and progress.get("started", 0) > epochs and fit.get("epoch_loop.batch_progress", {}).get("is_last_batch"):
        epochs += 1  # saved after the epoch's last batch (at its validation): its training is done
    if max_steps not in (None, -1) and int(state["global_step"]) >= int(max_steps):
        return True
    return max_epochs not in (None, -1) and epochs is not None and int(epochs) >= int(max_epochs)


def _is_main_process() -> bool:
    # Under torchrun / SLURM every rank runs train(); rank 0 holds the run directory's lock.
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


@contextmanager
def lock_folder(folder: Path, busy: str, wait: bool = False) -> Iterator[None]:
    """Hold ``folder/.lock`` (a POSIX record lock: released when the process ends, even by
    SIGKILL, and not inherited by forked DataLoader workers, which may outlive a run by a
    moment). Another process holding it: ``ConfigError(busy.format(pid=...))`` at once, or
    with ``wait`` the message is logged and the lock waited for."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            message = busy.format(pid=handle.read().strip() or "unknown")
            if not wait:
                raise ConfigError(message) from None
            log.info("%s: waiting", message)
            fcntl.lockf(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


@contextmanager
def lock_run_dir(output_dir: Path) -> Iterator[None]:
    """Hold the run directory for this run; another process gets a ``ConfigError`` at once."""
    if not _is_main_process():
        yield
        return
    with lock_folder(output_dir, f"run directory {output_dir} is in use by another process (pid {{pid}}); "
                                 "wait for it to end, or pick another hydra.run.dir"):
        yield


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def prepare_checkpoint_dir(output_dir: Path) -> None:
    """At start-up, not after an epoch of training: ``checkpoints/`` must be writable; the
    temporary files of a write that a kill interrupted (``.last.ckpt.*.tmp``) are removed
    by the main process (the run directory's lock says no other process is writing them)."""
    ckpts = output_dir / "checkpoints"
    try:
        ckpts.mkdir(parents=True, exist_ok=True)
        probe = ckpts / f".write_test.{os.getpid()}"
        try:
            probe.write_bytes(b"ok")
        finally:  # a full disk creates the file, then fails to write it: never leave it behind
            probe.unlink(missing_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write checkpoints to {ckpts} ({err.strerror or err}); free space or fix the "
                          "permissions, or pick another hydra.run.dir") from None
    for orphan in ckpts.glob(".*.ckpt.*.tmp") if _is_main_process() else ():
        orphan.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted checkpoint write", orphan)


def keep_history(output_dir: Path, resuming: bool) -> None:
    """Before a run writes anything: keep what earlier attempts left (see the module docstring).
    Only the main process (other DDP ranks share the run directory)."""
    if not _is_main_process():
        return
    csv = output_dir / "csv" / "metrics.csv"
    if resuming:
        if csv.is_file():  # Lightning's CSVLogger deletes it when it starts
            kept = csv.with_name(f"metrics.{_stamp()}.csv")
            csv.rename(kept)
            log.info("earlier attempt's CSV log kept as %s", kept)
        return
    used = [p for p in (output_dir / "checkpoints", output_dir / "metrics.json", output_dir / "csv") if p.exists()]
    if (output_dir / "checkpoints").is_dir() and not any((output_dir / "checkpoints").iterdir()):
        used = [p for p in used if p.name != "checkpoints"]
    if not used:
        return
    dest = output_dir / "previous" / _stamp()
    dest.mkdir(parents=True, exist_ok=True)
    for path in used:
        shutil.move(str(path), dest / path.name)
    log.warning("starting over in %s: the earlier attempt's %s moved to %s", output_dir,
                ", ".join(p.name for p in used), dest)


def append_attempt(path: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` plus, under ``attempts``, every earlier record of ``path`` (oldest first)."""
    if not path.is_file():
        return metrics
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return metrics
    attempts = previous.pop("attempts", []) if isinstance(previous, dict) else []
    return {**metrics, "attempts": [*attempts, previous]}
