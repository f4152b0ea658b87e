"""Hydra callbacks and checks for sweeps (``python -m joint_colsr.train -m ...``).

* :class:`SweepSummary` records every job of a multirun, failed ones included, in
  ``<sweep dir>/sweep_summary.json`` and ``sweep_summary.md``: overrides, status, the
  error of a failed job (its traceback goes to ``<job dir>/error.txt``) and the final
  metrics of a finished one, plus mean / std / 95 % confidence interval of every metric
  over seeds. Hydra itself runs the remaining jobs when one fails (the job's exception is
  caught in ``hydra.core.utils.run_job``) and exits non-zero at the end.
* :class:`WandbRunNaming` names every job's wandb run from its overrides and groups the
  runs of one sweep, through wandb's own ``WANDB_NAME`` / ``WANDB_RUN_GROUP`` variables
  (an explicit ``logger.wandb.name`` / ``group`` still wins).
* :func:`check_ddp_launch` refuses Lightning's script-relaunching ``ddp`` inside a local
  multirun, where each child process would start the whole sweep again.

Both callbacks are registered in ``conf/hydra/default.yaml``. Callbacks run in the
process that runs the job (a submitit or joblib worker included), so everything they
share goes through files in the sweep directory, under a file lock.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from joint_colsr.run.outputs import atomic_write

log = logging.getLogger(__name__)

SUMMARY_JSON = "sweep_summary.json"
SUMMARY_MD = "sweep_summary.md"
JOB_STATUS = "job_status.json"
_SEED_OVERRIDE = re.compile(r"^\+*seed=")


def _is_multirun(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN


def _is_global_rank_zero() -> bool:
    # Under SLURM every task of a DDP job runs the whole Hydra job, callbacks included.
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "SLURM_PROCID", "LOCAL_RANK"))


def _read_metrics(job_dir: Path) -> dict[str, Any]:
    path = job_dir / "metrics.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _numeric_metrics(job_dir: Path) -> dict[str, float]:
    metrics = _read_metrics(job_dir)
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _scheduler_job() -> dict[str, str]:
    """Inside a submitit job (``hydra/launcher=slurm`` / ``submitit_local``): the job id and
    the log files of this task, where a job's output and a crash outside Python end up."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return {}
    import submitit

    env = submitit.JobEnvironment()
    return {"scheduler_job_id": env.job_id, "log_out": str(env.paths.stdout), "log_err": str(env.paths.stderr)}


#: How a sweep summary marks a job whose model is fed the ground-truth L* (never ranked unmarked).
GUIDED_MARK = "GT-L* guided"


def _overrides_cell(job_or_group: dict[str, Any]) -> str:
    text = " ".join(job_or_group["overrides"]) or "(none)"
    return f"{text} **[{GUIDED_MARK}]**" if job_or_group.get("uses_ground_truth_l") else text


@contextmanager
def _locked(sweep_dir: Path) -> Iterator[None]:
    # Jobs of a joblib or submitit sweep finish concurrently; one writer at a time.
    with open(sweep_dir / ".sweep_summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    with atomic_write(path, fsync=False) as handle:  # a summary, rewritten after every job
        handle.write(text)


def confidence_interval(values: list[float], level: float = 0.95) -> dict[str, float | int | None]:
    """Mean, sample standard deviation and the half-width of a Student-t confidence interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None}
    from scipy.stats import t

    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"n": n, "mean": mean, "std": std, "ci95": float(t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)}


def aggregate_over_seeds(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group completed jobs by their overrides except ``seed=``; summarize every metric."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for job in jobs:
        if job["status"] == "COMPLETED":
            key = tuple(o for o in job["overrides"] if not _SEED_OVERRIDE.match(o))
            groups.setdefault(key, []).append(job)
    out = []
    for key, members in groups.items():
        names = sorted(set.intersection(*(set(m["metrics"]) for m in members)))
        out.append({
            "overrides": list(key),
            "jobs": [m["num"] for m in members],
            "uses_ground_truth_l": any(m.get("uses_ground_truth_l") for m in members),
            "metrics": {name: confidence_interval([float(m["metrics"][name]) for m in members]) for name in names},
        })
    return out


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Sweep {summary['sweep_dir']}",
        "",
        f"{summary['completed']} completed, {summary['failed']} failed, {summary['interrupted']} interrupted "
        f"(checkpoint saved; rerun the job's directory to resume), {summary['total']} recorded.",
        "",
        "| job | status | overrides | val/psnr | val/psnr_joint | val/psnr_gray | fit_seconds | error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for job in summary["jobs"]:
        m = job["metrics"]
        error = (job["error"] or "").replace("|", "/").replace("\n", " ")
        if error and job.get("log_err"):
            error += f" (job {job['scheduler_job_id']}; log: {job['log_err']})"
        cells = [job["num"], job["status"], _overrides_cell(job), m.get("val/psnr", ""), m.get("val/psnr_joint", ""),
                 m.get("val/psnr_gray", ""), m.get("fit_seconds", ""), error]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    for metric in ("val/psnr", "val/psnr_joint"):
        multi = [g for g in summary["over_seeds"] if len(g["jobs"]) > 1 and metric in g["metrics"]]
        if multi:
            lines += ["", f"## {metric} over seeds (mean +- 95 % CI, Student t)", "", "| overrides | n | mean | std | ci95 |",
                      "| --- | --- | --- | --- | --- |"]
            for g in multi:
                s = g["metrics"][metric]
                lines.append(f"| {_overrides_cell(g)} | {s['n']} | {s['mean']:.3f} | {_spread(s['std'])} | {_spread(s['ci95'])} |")
            if any(g["metrics"][metric]["std"] < 0.0005 for g in multi):
                lines += ["", SEEDS_AGREE_NOTE]
    if any(job.get("uses_ground_truth_l") for job in summary["jobs"]):
        lines += ["", f"{GUIDED_MARK}: the model is fed the ground-truth high-resolution L*; rank it only beside other guided runs."]
    return "\n".join(lines) + "\n"


#: Said under a seed table whose seeds agree to 3 decimals (e.g. the 2-step ``debug=tiny`` form).
SEEDS_AGREE_NOTE = (
    "Seeds agree to 3 decimals: every net's a*b* head starts at zero (the gray image), and in so "
    "few steps no seed has moved it far, so the seed cannot show yet. Train longer (the default "
    "recipe, not debug=tiny) to measure the spread across seeds.")


def _spread(value: float) -> str:
    """std / ci95 cells: 3 decimals, or 2 significant digits below 0.0005 (not a bare 0.000)."""
    return f"{value:.1e}" if 0 < abs(value) < 0.0005 else f"{value:.3f}"


def write_sweep_summary(sweep_dir: Path) -> dict[str, Any]:
    """Rebuild ``sweep_summary.json`` / ``.md`` from the ``job_status.json`` of every job."""
    jobs = []
    for path in sweep_dir.glob(f"**/{JOB_STATUS}"):
        try:
            jobs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    jobs.sort(key=lambda j: (j["num"], j["output_dir"]))
    failed = [j for j in jobs if j["status"] != "COMPLETED"]
    interrupted = [j for j in failed if j["status"] == "INTERRUPTED"]
    summary = {
        "sweep_dir": str(sweep_dir),
        "total": len(jobs),
        "completed": len(jobs) - len(failed),
        "failed": len(failed) - len(interrupted),
        "interrupted": len(interrupted),
        "failed_jobs": [{"num": j["num"], "overrides": j["overrides"], "error": j["error"]} for j in failed],
        "jobs": jobs,
        "over_seeds": aggregate_over_seeds(jobs),
    }
    _write_atomic(sweep_dir / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    _write_atomic(sweep_dir / SUMMARY_MD, _markdown(summary))
    return summary


#: The sweep directory of the multirun this process is running (set by :class:`SweepSummary`);
#: the command's error line points there when a job failed.
CURRENT_SWEEP_DIR: Path | None = None


class SweepSummary(Callback):
    """Record each multirun job's outcome; keep the sweep's summary files current."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global CURRENT_SWEEP_DIR
        CURRENT_SWEEP_DIR = Path(str(config.hydra.sweep.dir)).absolute()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_multirun(config) or not _is_global_rank_zero():
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        record: dict[str, Any] = {
            "num": int(config.hydra.job.num),
            "overrides": list(job_return.overrides or []),
            "status": job_return.status.name,
            "output_dir": str(job_dir),
            "return_value": None,
            "metrics": _numeric_metrics(job_dir),
            "uses_ground_truth_l": bool(_read_metrics(job_dir).get("uses_ground_truth_l", False)),
            "error": None,
            **_scheduler_job(),
        }
        try:
            value = job_return.return_value  # a failed job's exception is raised here
            record["return_value"] = value if isinstance(value, (int, float, str)) or value is None else repr(value)
        except Exception as err:  # noqa: BLE001 - any job error is recorded, none is swallowed (Hydra re-raises it)
            record["error"] = f"{type(err).__name__}: {err}"
            # here, not at the top: compare imports this module and its --help must not pay for Lightning
            from joint_colsr.run.preemption import TrainingInterrupted

            if isinstance(err, TrainingInterrupted):  # checkpoint saved; the sweep stops after this job
                record["status"] = "INTERRUPTED"
            trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            job_dir.mkdir(parents=True, exist_ok=True)
            (job_dir / "error.txt").write_text(trace)
            log.error("sweep job %d failed (%s): %s; traceback: %s", record["num"], " ".join(record["overrides"]),
                      record["error"], job_dir / "error.txt")
        job_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(job_dir / JOB_STATUS, json.dumps(record, indent=2) + "\n")
        with _locked(sweep_dir):
            summary = write_sweep_summary(sweep_dir)
        if summary["failed"]:
            log.error("sweep so far: %d completed, %d failed; see %s", summary["completed"], summary["failed"], sweep_dir / SUMMARY_MD)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        if not sweep_dir.exists():
            return
        with _locked(sweep_dir):
            summary = write_sweep_summary(sweep_dir)
        log.info("sweep done: %d completed, %d failed; summary: %s", summary["completed"], summary["failed"], sweep_dir / SUMMARY_MD)


class StopBeforeRun(BaseException):
    """Carries an error out of a Hydra callback. Hydra turns an ``Exception`` raised by a
    callback into a warning and goes on, so a refusal travels as a ``BaseException`` (like
    ``SystemExit``); :func:`joint_colsr.run.config_checks.hydra_command` reports ``.error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class RunDirGuard(Callback):
    """Before Hydra writes anything (``.hydra/``, the log): a command whose ``hydra.run.dir``
    is another command's run directory (``eval hydra.run.dir=<a training run>``) fails with
    one line, and that run keeps its files (:func:`joint_colsr.run.outputs.refuse_foreign_run_dir`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from joint_colsr.run.outputs import refuse_foreign_run_dir

        # The command is the primary config's name (train, eval, ...), not task_name: an
        # experiment renames the task (experiment=paper -> "paper") but it is still a `train`
        # run, whose own folder a resume (or a DDP rank re-running the command) writes again.
        command = str(OmegaConf.select(config, "hydra.job.config_name", default="")
                      or OmegaConf.select(config, "task_name", default="") or "")
        try:
            if command:
                refuse_foreign_run_dir(Path(str(config.hydra.run.dir)).expanduser(), command)
        except ValueError as err:
            raise StopBeforeRun(err) from None


class WandbRunNaming(Callback):
    """Name each job's wandb run after its overrides; group the runs of a multirun.

    Sets ``WANDB_NAME`` (``<task>`` or ``<task>:<overrides>``, for a multirun prefixed by
    the job number) and, in a multirun, ``WANDB_RUN_GROUP`` (``<task>/<sweep dir name>``)
    and ``WANDB_JOB_TYPE`` (the task) for the duration of the job. DDP children inherit them.
    """

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        task = str(OmegaConf.select(config, "task_name", default="train"))
        overrides = str(OmegaConf.select(config, "hydra.job.override_dirname", default="") or "")
        names = {"WANDB_NAME": f"{task}:{overrides}" if overrides else task}
        if _is_multirun(config):
            names["WANDB_NAME"] = f"{config.hydra.job.num}:{overrides or task}"
            names["WANDB_RUN_GROUP"] = f"{task}/{Path(str(config.hydra.sweep.dir)).name}"
            names["WANDB_JOB_TYPE"] = task
        self._saved = {k: os.environ.get(k) for k in names}
        for key, value in names.items():
            if self._saved[key] is None:  # a user's own WANDB_NAME / WANDB_RUN_GROUP wins
                os.environ[key] = value

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
        self._saved = {}


def _requested_devices(trainer_cfg: DictConfig) -> int:
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices >= 0:
        return devices
    # "auto" or -1: all visible accelerators (one process on a CPU).
    import torch

    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


def check_ddp_launch(cfg: DictConfig) -> None:
    """Fail fast on ``strategy=ddp`` with several processes inside a *local* Hydra multirun.

    Lightning's ``ddp`` starts the other ranks by re-running this script's command line;
    in a multirun that command line is the whole sweep, so every child would start the
    sweep again (Hydra issue 2070). Processes started by a scheduler (SLURM ``srun`` via
    ``hydra/launcher=submitit_slurm``, ``torchrun``) are fine, and so is ``ddp_spawn``.

    Raises:
        ValueError: naming ``trainer.strategy`` and the ways out.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    trainer_cfg = cfg.get("trainer")
    strategy = str(trainer_cfg.get("strategy", "auto")) if trainer_cfg is not None else "auto"
    if not strategy.startswith("ddp") or "spawn" in strategy or "fork" in strategy:
        return
    external = any(k in os.environ for k in ("LOCAL_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"))
    if external or _requested_devices(trainer_cfg) * int(trainer_cfg.get("num_nodes", 1) or 1) <= 1:
        return
    raise ValueError(
        f"trainer.strategy={strategy} cannot run inside a local multirun: Lightning would start each extra rank by "
        "re-running the whole sweep command. Use trainer.strategy=ddp_spawn for local sweeps, or "
        "hydra/launcher=submitit_slurm (tasks_per_node = trainer.devices) on a cluster."
    )
