"""run/quiet.py drops exactly the listed third-party noise, at a real command's start-up."""

import os
import subprocess
import sys

from ..conftest import REPO, hang_bound


def test_a_training_run_prints_no_lightning_tip_and_no_leafspec_warning(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "joint_colsr.train", "debug=tiny", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=hang_bound(300))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Tip:" not in out and "litlogger" not in out and "litmodels" not in out, out[-3000:]
    assert "LeafSpec" not in out, out[-3000:]
    assert "Validation psnr" in out  # the run's own lines are still there


def test_the_same_deprecation_from_user_code_still_shows():
    import warnings

    from joint_colsr.run.quiet import quiet_third_party_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning)
    assert len(caught) == 1


def test_only_the_echo_of_a_killed_loader_worker_is_dropped_from_unraisable_errors(tmp_path):
    script = (
        "from joint_colsr.run.quiet import quiet_third_party_noise\n"
        "quiet_third_party_noise(); quiet_third_party_noise()\n"
        "class Loader:\n"
        "    def __init__(self, err): self.err = err\n"
        "    def __del__(self): raise self.err\n"
        "Loader(RuntimeError('DataLoader worker (pid 4242) is killed by signal: Killed. '))\n"
        "Loader(ValueError('a real problem in a finalizer'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=hang_bound(120))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pid 4242" not in proc.stderr
    assert "ValueError: a real problem in a finalizer" in proc.stderr
