"""Run the commands in a fresh process: ``run_train`` for tests of multiruns, launchers and DDP
(full tracebacks), ``run_command`` exactly as a user types a command (what the user sees)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO, hang_bound


def run_train(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """The training CLI in a fresh process, offline, one thread per process, from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", "WANDB_SILENT": "true"}
    for key in ("WANDB_NAME", "WANDB_RUN_GROUP", "LOCAL_RANK", "RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "joint_colsr.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=hang_bound(timeout))


def output_tail(proc: subprocess.CompletedProcess, n: int = 3000) -> str:
    return (proc.stdout + proc.stderr)[-n:]


def run_command(module: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m joint_colsr.MODULE ARGS`` as a user runs it: no ``HYDRA_FULL_ERROR``, offline
    wandb, from ``cwd``; ``env`` adds variables (a ``None`` value removes one)."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("HYDRA_FULL_ERROR", "JOINT_COLSR_USER_FULL_ERROR", "WANDB_MODE", "WANDB_API_KEY")}
    base.update({"PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **(env or {})})
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", f"joint_colsr.{module}", *args], cwd=cwd,
                          env={k: v for k, v in base.items() if v is not None}, capture_output=True, text=True,
                          timeout=hang_bound(timeout), stdin=subprocess.DEVNULL)
