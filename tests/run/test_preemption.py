"""Pre-emption: SIGTERM / SIGUSR1 save a resumable checkpoint, mark metrics.json interrupted,
exit non-zero; the resumed run ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch

from joint_colsr.run.preemption import TrainingInterrupted
from joint_colsr.train import train

from .._cli import output_tail, run_train
from ..conftest import assert_bitwise_equal, checkpoint_weights, hang_bound
from .test_reliability import EXACT

# 3 epochs of 4 steps (8 samples, batch 2), 2 validation batches per epoch.
RUN = [*EXACT, "trainer.max_epochs=3", "trainer.limit_val_batches=2", "data.val_views=2"]
FAULT = "+callbacks.fault._target_=tests._faults.SignalAt"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Weights of uninterrupted runs, per worker count."""
    from ..conftest import compose_config

    out = {}
    for workers in (0, 2):
        run_dir = tmp_path_factory.mktemp(f"ref{workers}")
        cfg = compose_config("train", [*RUN, f"data.num_workers={workers}"], output_dir=run_dir)
        metrics = train(cfg)
        out[workers] = (checkpoint_weights(run_dir / "checkpoints" / "last.ckpt"), metrics["global_step"])
    return out


POINTS = {
    "train-random-step": "random",  # a mid-epoch training step drawn per run (named on failure)
    "train-step4-then-val": "step=4",  # the epoch's last step: the signal lands in validation batch 0
    "val-batch0-epoch1": "val_batch=0 +callbacks.fault.epoch=1",
    "val-last-batch-epoch0": "val_batch=1",  # validation ends, the loop stops at the epoch's end
}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("where", list(POINTS.values()), ids=list(POINTS))
def test_sigterm_then_resume_equals_uninterrupted(compose_cfg, reference, workers, where):
    """SIGTERM at a random step, on an epoch's last step, and during validation: last.ckpt is
    saved, metrics.json says interrupted, and rerunning the run directory ends bitwise equal."""
    if where == "random":  # drawn here, not at collection: xdist workers must collect the same ids
        where = f"step={random.SystemRandom().choice([1, 2, 3, 5, 6, 7, 9, 10, 11])}"
    print(f"SIGTERM at {where}, {workers} workers")  # shown with a failure
    key, value = where.split()[0].split("=")
    extra = [f"+callbacks.fault.{key}={value}", *where.split()[1:]]
    cfg = compose_cfg([*RUN, f"data.num_workers={workers}", FAULT, *extra])
    run_dir = Path(cfg.paths.output_dir)
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg)
    assert info.value.exit_code == 128 + signal.SIGTERM
    saved = run_dir / "checkpoints" / "last.ckpt"
    assert info.value.ckpt_path == str(saved)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["interrupted_by"] == "SIGTERM"
    state = torch.load(saved, map_location="cpu", weights_only=False)
    assert state["global_step"] == metrics["global_step"] == info.value.global_step

    again = compose_cfg([*RUN, f"data.num_workers={workers}"])  # same run dir: auto-resume
    done = train(again)
    ref_weights, ref_steps = reference[workers]
    assert done["global_step"] == ref_steps, f"interrupted at {where}"
    assert_bitwise_equal(ref_weights, checkpoint_weights(saved))


def test_sigusr1_takes_the_same_path(compose_cfg):
    cfg = compose_cfg([*EXACT, "data.num_workers=0", "trainer.max_epochs=2", FAULT,
                       "+callbacks.fault.signum=SIGUSR1", "+callbacks.fault.step=3"])
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg)
    assert info.value.exit_code == 128 + signal.SIGUSR1 and info.value.global_step == 3
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["interrupted_by"] == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored


def test_a_nan_error_does_not_write_a_preemption_checkpoint(compose_cfg):
    from joint_colsr.run.callbacks import NonFiniteLossError

    cfg = compose_cfg([*EXACT, "data.num_workers=0", "trainer.max_epochs=50", "model.optimizer.lr=1e8",
                       "model.net.output_activation=none"])
    with pytest.raises(NonFiniteLossError):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


@pytest.mark.slow
def test_external_sigterm_in_a_multirun_exits_143_and_is_summarized(tmp_path):
    """A real SIGTERM from outside (as a scheduler sends it) to a local sweep: the job saves
    and is recorded as INTERRUPTED in sweep_summary.json, no further job starts, exit 143."""
    import subprocess
    import sys
    import time

    sweep = tmp_path / "sweep"
    args = ["-m", *EXACT, "data.num_workers=0", "trainer.max_epochs=50", "seed=1,2",
            "callbacks.last_checkpoint.every_n_train_steps=1", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    from ..conftest import REPO

    proc = subprocess.Popen([sys.executable, "-m", "joint_colsr.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + hang_bound(240)
    while time.monotonic() < deadline and proc.poll() is None and not last.exists():
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=hang_bound(240))[0]
    assert proc.returncode == 143, out[-3000:]
    assert "training interrupted by SIGTERM" in out
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["interrupted"] == 1 and summary["total"] == 1, summary
    assert summary["jobs"][0]["status"] == "INTERRUPTED"
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "interrupted"
    assert not (sweep / "1").exists()  # the sweep stopped


def test_single_run_sigterm_exit_code(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train([*EXACT, "data.num_workers=0", "trainer.max_epochs=1", FAULT, "+callbacks.fault.step=2",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 143, output_tail(proc)
    assert "Traceback" not in proc.stderr, output_tail(proc)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
