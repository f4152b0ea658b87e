"""Train a model: ``python -m joint_colsr.train [hydra overrides]`` (config: ``conf/train.yaml``).

``train(cfg)`` returns the final metrics and writes them to ``<run dir>/metrics.json``;
the checkpoint of the last epoch is ``<run dir>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

from joint_colsr.run.fast_help import answer_help_early

answer_help_early(__name__, 'train')  # before torch/Lightning are imported (run/fast_help.py)

import json
import logging
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from joint_colsr.assembly import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_system,
    build_trainer,
    resolved_config,
    start_run,
)
from joint_colsr.run.checkpointing import checkpoint_paths, read_checkpoint
from joint_colsr.run.config_checks import ConfigError, check_config, hydra_command, select
from joint_colsr.run.hydra_callbacks import check_ddp_launch
from joint_colsr.nets import count_parameters
from joint_colsr.run.outputs import jsonable, print_run_summary, write_json
from joint_colsr.run.preemption import (
    PreemptionCheckpoint,
    TrainingInterrupted,
    broadcast_sigterm_at_logging_steps,
    handle_preemption,
)
from joint_colsr.run.resume import (
    RecordRunConfig,
    append_attempt,
    find_resume_checkpoint,
    check_resume_config,
    finished,
    keep_history,
    load_state,
    lock_run_dir,
    prepare_checkpoint_dir,
)
from joint_colsr.systems.colsr import system_class_of

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured model on the configured data; return the final metrics."""
    check_config(cfg)
    check_ddp_launch(cfg)
    output_dir = start_run(cfg)
    with lock_run_dir(output_dir):
        return _train(cfg, output_dir)


def _resume_point(cfg: DictConfig, output_dir: Path, resolved: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """The checkpoint to resume from (``ckpt_path``, else the run directory's with
    ``auto_resume``), checked against this config, and its loaded state."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None and cfg.get("auto_resume"):
        found = find_resume_checkpoint(output_dir, set_aside_damaged=True)
        if found is not None:
            log.info("auto_resume: continuing from %s", found)
            ckpt_path = str(found)
    if ckpt_path is None or "://" in str(ckpt_path) or str(ckpt_path) in ("last", "hpc", "best"):
        return ckpt_path, None  # nothing, or Lightning's to resolve
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} is not a file")
    return str(path), load_state(path)


def _train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    resolved = resolved_config(cfg)
    ckpt_path, state = _resume_point(cfg, output_dir, resolved)
    system = build_system(cfg, startup_checks=True)  # output size (and determinism on CUDA) before any data is read
    if state is not None:
        check_resume_system(system, ckpt_path, state)
        check_resume_config(state.get("run_config"), resolved, ckpt_path)
        if finished(state, select(cfg, "trainer.max_epochs"), select(cfg, "trainer.max_steps"),
                    select(cfg, "callbacks.sample_budget.samples")):
            return _already_finished(output_dir, ckpt_path, state)
    keep_history(output_dir, resuming=ckpt_path is not None)
    prepare_checkpoint_dir(output_dir)
    datamodule = build_datamodule(cfg)
    callbacks = build_callbacks(cfg, system)
    preemption = PreemptionCheckpoint(output_dir / "checkpoints")
    callbacks += [RecordRunConfig(resolved), preemption]
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, callbacks, loggers, system)
    broadcast_sigterm_at_logging_steps(trainer)  # DDP: no host sync per step for it (run/preemption.py)
    for logger in trainer.loggers:
        with _wandb_hint():
            logger.log_hyperparams({**resolved, "model/params": count_parameters(system.net)})

    start = time.perf_counter()
    try:
        with handle_preemption(trainer) as received:
            trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        # Lightning stopped at a batch boundary on SIGTERM/SIGUSR1; the callback saved last.ckpt.
        interrupted = TrainingInterrupted(received.signum or signal.SIGTERM, preemption.saved_path, trainer.global_step)
        metrics = _final_metrics(trainer, system, output_dir, time.perf_counter() - start)
        metrics.update(status="interrupted", interrupted_by=signal.Signals(interrupted.signum).name,
                       resume_ckpt=preemption.saved_path)
        if trainer.is_global_zero:
            _write_metrics(output_dir, metrics)
        _finish_wandb(trainer, metrics, exit_code=interrupted.exit_code)
        raise interrupted from None
    except BaseException:
        _finish_wandb(trainer, {}, exit_code=1)  # mark the run failed; the next multirun job starts a fresh one
        raise
    metrics = _final_metrics(trainer, system, output_dir, time.perf_counter() - start)
    metrics["status"] = "completed"
    if trainer.is_global_zero:
        _write_metrics(output_dir, metrics)
        _print_summary(metrics, output_dir)
    _finish_wandb(trainer, metrics, exit_code=0)
    return metrics


def _final_metrics(trainer: pl.Trainer, system: pl.LightningModule, output_dir: Path, elapsed: float) -> dict[str, Any]:
    metrics: dict[str, Any] = {k: jsonable(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(
        epochs=trainer.current_epoch,
        global_step=trainer.global_step,
        fit_seconds=round(elapsed, 2),
        params=count_parameters(system.net),
        uses_ground_truth_l=bool(getattr(system, "uses_ground_truth_l", False)),
    )
    if not trainer.fast_dev_run:
        metrics.update(checkpoint_paths(trainer))
        _steps_from_spawned_ranks(metrics, output_dir)
    return metrics


def _write_metrics(output_dir: Path, metrics: dict[str, Any]) -> None:
    """``metrics.json``, earlier attempts' records kept under ``attempts``."""
    write_json(output_dir / "metrics.json", append_attempt(output_dir / "metrics.json", metrics))


def _already_finished(output_dir: Path, ckpt_path: str, state: dict[str, Any]) -> dict[str, Any]:
    """A rerun of a finished run: say so, touch nothing, return what the run recorded."""
    path = output_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        metrics = {}
    metrics = metrics or {"global_step": int(state["global_step"]), "last_ckpt": ckpt_path}
    print(f"Run {output_dir} already finished ({ckpt_path}, global step {int(state['global_step'])}): nothing to do. "
          "Raise trainer.max_epochs to train on, or set auto_resume=false to start over.")
    return metrics


def check_resume_system(system: pl.LightningModule, ckpt_path: str, state: dict[str, Any]) -> None:
    """A checkpoint (``state``, read from ``ckpt_path``) resumes only into the system class
    that wrote it (its weights and optimizer states are that class's): otherwise say which
    ``model=`` to add."""
    saved = system_class_of(state).rsplit(".", 1)[-1]
    built = type(system).__name__
    if saved != built:
        hint = " (add model=srgan, or the model= the run was trained with)" if saved == "GANSystem" else \
            " (add the model= the run was trained with)"
        raise ConfigError(f"ckpt_path={ckpt_path} was written by a {saved}, but this config builds a {built}{hint}")


def _steps_from_spawned_ranks(metrics: dict[str, Any], output_dir: Path) -> None:
    """With ``trainer.strategy=ddp_spawn`` the ranks trained in child processes; Lightning
    sends back their metrics and weights but neither the loop counters nor the last
    checkpoint's path, so this process's trainer still says step 0. The last checkpoint the
    ranks wrote has them."""
    if metrics.get("global_step"):
        return
    last = metrics.get("last_ckpt") or find_resume_checkpoint(output_dir)
    if not last or not Path(last).is_file():
        return
    metrics["last_ckpt"] = str(last)
    state = read_checkpoint(last)
    if state.get("global_step"):
        metrics["global_step"] = int(state["global_step"])
        metrics["epochs"] = int(state.get("epoch", -1)) + 1


#: What ``logger=wandb`` without an account should say.
WANDB_OFFLINE_HINT = (
    "logger=wandb needs a wandb account: log in once with `wandb login` (or set WANDB_API_KEY), "
    "or log offline with WANDB_MODE=offline (upload later with `wandb sync <run dir>/wandb/offline-run-*`), "
    "or use logger=csv"
)


@contextmanager
def _wandb_hint() -> Iterator[None]:
    """Turn wandb's "No API key configured" into a ConfigError that says how to run offline."""
    try:
        yield
    except Exception as err:
        if type(err).__name__ == "UsageError" and "api key" in str(err).lower():
            raise ConfigError(f"{WANDB_OFFLINE_HINT} (wandb: {err})") from err
        raise


def _finish_wandb(trainer: pl.Trainer, summary: dict[str, Any], exit_code: int) -> None:
    """End this job's wandb run (each multirun job is its own run), final metrics in its summary.

    ``wandb.teardown()`` drops wandb's process-wide settings too, so the next job of an
    in-process sweep reads its own ``WANDB_NAME`` / ``WANDB_RUN_GROUP`` afresh.
    """
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            run = logger.experiment
            run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            run.finish(exit_code=exit_code)
            import wandb  # only here: a run without logger=wandb never imports it

            wandb.teardown()


def _print_summary(metrics: dict[str, Any], output_dir: Path) -> None:
    psnr, gray, joint = metrics.get("val/psnr"), metrics.get("val/psnr_gray"), metrics.get("val/psnr_joint")
    lines = []
    if isinstance(psnr, float) and isinstance(gray, float):
        lines.append(
            f"Validation psnr (GT L* + predicted a*b*, 8-bit sRGB): {psnr:.2f} dB | "
            f"psnr_gray (GT L*, a*=b*=0): {gray:.2f} dB | gain {psnr - gray:+.2f} dB"
        )
    if isinstance(joint, float):
        lines.append(f"Validation psnr_joint (own L* + predicted a*b*, what the best checkpoint is chosen by): {joint:.2f} dB")
    grid = output_dir / "images" / "val_latest.png"
    if grid.exists():
        lines.append(f"Validation grid: {grid}")
    print_run_summary(output_dir, lines)


@hydra_command("train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    key = cfg.get("optimized_metric")
    if key == "val/psnr_joint" and metrics.get("uses_ground_truth_l"):
        key = "val/psnr"  # a GT-L*-guided net has no own L* (ColSRSystem.selection_metric)
    return metrics.get(key) if key else None


if __name__ == "__main__":
    main()
