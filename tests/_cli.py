"""Run ``python -m joint_colsr.train`` as a user would, for tests of multiruns, launchers and DDP."""

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
