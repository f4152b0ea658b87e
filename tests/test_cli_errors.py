"""What a user sees when a command fails (issue 24): one line naming the problem and the fix,
exit status 1, no traceback (``HYDRA_FULL_ERROR=1`` shows it), and nothing of another run lost.

Each command line is run as a user runs it (``python -m joint_colsr.X``), so the errors Hydra
raises before our task (composition, an unwritable run directory) are covered too.
"""

import errno
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from joint_colsr.run.config_checks import describe_error, is_expected_error

from ._cli import run_command as _command

TINY = ["debug=tiny"]


def _one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("overrides,expected", [
    (["seed=-1"], ["seed must be an integer from 0 to 4294967295"]),
    (["seed=8589934593"], ["seed must be an integer from 0 to 4294967295"]),
    (["trainer.precision=banana"], ["trainer.precision='banana'", "bf16-mixed"]),
    (["model.optimizer.lr=1e38"], ["model.optimizer.lr=1e+38 must be in (0, 1e+30]"]),
    (["model.optimizer.lr=${model.optimizer.lrr}"], ["model.optimizer.lr: Interpolation key 'model.optimizer.lrr' not found"]),
    (["+auto_resum=false"], ["unknown key auto_resum", "did you mean auto_resume?"]),
    (["+foo=1"], ["unknown key foo", "the top level has"]),
    (["+speed.chanels_last=true"], ["unknown key speed.chanels_last", "did you mean speed.channels_last?"]),
    (["trainer.max_epochz=3"], ["config: Could not override 'trainer.max_epochz'"]),
    (["model=nonesuch"], ["Could not find 'model/nonesuch'", "joint_paper"]),
])
def test_train_config_errors_are_one_line(overrides, expected, tmp_path):
    run_dir = tmp_path / "run"
    proc = _command("train", *TINY, *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    _one_line_error(proc, *expected)
    assert not (run_dir / "checkpoints").exists()  # refused at start-up, before any training


def test_full_error_shows_the_traceback(tmp_path):
    proc = _command("train", *TINY, "seed=-1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_added_keys_that_are_read_are_accepted(tmp_path):
    # ++ on an existing key is an ordinary override; + inside a _target_ node is checked by its signature
    proc = _command("train", *TINY, "++seed=3", "+trainer.num_sanity_val_steps=0", "trainer.max_steps=1",
                    f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_predict_error_raised_under_python_m_is_one_line(tmp_path, image_folder):
    # under `python -m`, the raising module is __main__: still the package's own stated error
    proc = _command("predict", "baseline=gray", f"input_dir={image_folder}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    _one_line_error(proc, "GrayBaseline needs ground-truth L* at the output size: use mode=reference")


def test_a_failed_sweep_job_is_one_line_pointing_at_the_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _command("train", "-m", *TINY, "model.optimizer.lr=1e-4,abc", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    line = _one_line_error(proc, "a sweep job failed", "model.optimizer.lr='abc'", str(sweep / "sweep_summary.md"))
    assert "error.txt" in line
    assert (sweep / "0" / "metrics.json").is_file()  # the other job ran


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_no_command_writes_into_another_commands_run(tmp_path, tiny_ckpt, image_folder):
    run = tmp_path / "train_run"
    shutil.copytree(tiny_ckpt.parent.parent, run)
    before = _digests(run)
    proc = _command("eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "data=folder", f"data.root={image_folder}",
                    f"hydra.run.dir={run}", cwd=tmp_path)
    _one_line_error(proc, f"hydra.run.dir={run} holds a `train` run", "`eval` writes its own files")
    proc = _command("predict", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"input_dir={image_folder}",
                    f"output_dir={run}", cwd=tmp_path)
    _one_line_error(proc, f"output_dir={run} holds a `train` run")
    assert _digests(run) == before  # nothing written, .hydra/ included
    # and the other way round: training into an evaluation's folder
    evaluation = tmp_path / "eval_run"
    proc = _command("eval", "baseline=gray", "data=folder", f"data.root={image_folder}", f"hydra.run.dir={evaluation}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = _digests(evaluation)
    _one_line_error(_command("train", *TINY, f"hydra.run.dir={evaluation}", cwd=tmp_path), "holds a `eval` run")
    assert _digests(evaluation) == before


def test_a_killed_loader_worker_is_one_line_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    # 8 batches of 4, killed after step 2: a worker prefetches 2 batches ahead, so batch 5 needs the dead one
    over = [*TINY, "data.num_workers=1", "data.train_samples_per_epoch=32", "trainer.limit_train_batches=8",
            "callbacks.last_checkpoint.every_n_train_steps=1", f"hydra.run.dir={run}"]
    proc = _command("train", *over, "+callbacks.fault._target_=tests._faults.KillLoaderWorkers", "+callbacks.fault.step=2",
                    cwd=tmp_path)
    _one_line_error(proc, "DataLoader worker (pid", "is killed by signal: Killed", "lower data.num_workers",
                    "run the same command again")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    proc = _command("train", *over, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "auto_resume: continuing from" in proc.stdout + proc.stderr


def _hand_over(self):
    """Stands where torch's ``_MultiProcessingDataLoaderIter._try_get_data`` stands (``self``: the iterator)
    when a worker dies between queuing a batch and handing over its shared memory."""
    raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")


def test_a_worker_killed_during_a_batch_handover_is_named_with_its_signal():
    import signal

    import torch
    from torch.utils.data import DataLoader

    iterator = iter(DataLoader([torch.zeros(1)] * 4, num_workers=1))
    (worker,) = iterator._workers
    watch = signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would raise in this test process
    try:
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=60)
        try:
            _hand_over(iterator)
        except ConnectionResetError as err:
            message = describe_error(err)
            assert is_expected_error(err)
        unexpected = RuntimeError(f"DataLoader worker (pid(s) {worker.pid}) exited unexpectedly")
        assert describe_error(unexpected).startswith(  # no iterator in its traceback: torch's words alone
            f"DataLoader worker (pid(s) {worker.pid}) exited unexpectedly (the kernel's")
        try:
            try:
                _hand_over(iterator)
            except ConnectionResetError as err:
                raise unexpected from err
        except RuntimeError as err:
            exited = describe_error(err)
    finally:
        del iterator
        signal.signal(signal.SIGCHLD, watch)
    for text in (message, exited):
        assert text.startswith(f"DataLoader worker (pid {worker.pid}) is killed by signal: Killed (the kernel's"), text
        assert "lower data.num_workers" in text and "run the same command again" in text
    try:
        _hand_over(object())
    except ConnectionResetError as err:
        assert describe_error(err) is None  # a connection error outside a data loader is not a worker's death


def test_eval_says_it_takes_no_model(tmp_path, tiny_ckpt):
    proc = _command("eval", f"ckpt_path={tiny_ckpt}", "model=srgan", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    _one_line_error(proc, "eval takes no model=: it rebuilds the model a checkpoint was trained with")


def test_storage_errors_are_named_with_the_fix():
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError:
            raise AttributeError("'_idat' object has no attribute 'fileno'")  # what PIL raises on top of it
    except AttributeError as err:
        assert is_expected_error(err)
        assert describe_error(err).startswith("no space left on the device: free some space, then run the same command again")
    ro = OSError(errno.EROFS, "Read-only file system", "/data/run/train.log")
    wrapped = ValueError("Unable to configure handler 'file'")
    wrapped.__cause__ = ro
    assert describe_error(wrapped).startswith("the file system is read-only writing /data/run/train.log: choose a writable folder")
    killed = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
    assert "out-of-memory killer" in describe_error(killed) and "resumes from its checkpoints/last.ckpt" in describe_error(killed)
    assert describe_error(RuntimeError("shape mismatch")) is None and not is_expected_error(KeyError("x"))


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")


@pytest.fixture
def small_mounts(tmp_path):
    mounts: list[Path] = []

    def mount(name: str, options: str) -> Path:
        where = tmp_path / name
        _mount_tmpfs(where, options)
        mounts.append(where)
        return where

    yield mount
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_read_only_and_full_disks_are_one_line(tmp_path, small_mounts, tiny_ckpt):
    ro = small_mounts("ro", "ro,size=1m")
    _one_line_error(_command("train", *TINY, f"hydra.run.dir={ro / 'new'}", cwd=tmp_path),
                    "the file system is read-only", "choose a writable folder")
    # an existing run on a file system that became read-only: Hydra's log handler meets it first
    existing = small_mounts("existing", "size=8m")
    shutil.copytree(tiny_ckpt.parent.parent, existing / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(existing)], check=True)
    _one_line_error(_command("train", *TINY, "trainer.max_epochs=2", f"hydra.run.dir={existing / 'run'}", cwd=tmp_path),
                    "read-only")
    full = small_mounts("full", "size=256k")
    proc = _command("train", *TINY, f"hydra.run.dir={full / 'run'}", cwd=tmp_path)
    _one_line_error(proc, "no space left on the device")
    assert not list((full / "run" / "checkpoints").glob(".write_test.*"))


def test_after_a_dead_worker_the_process_ends_without_teardown_but_never_a_caller_in_process(monkeypatch):
    import sys

    from joint_colsr.run import in_process
    from joint_colsr.run.config_checks import _exit_now

    code = ("import atexit, logging; from joint_colsr.run.config_checks import _exit_now; "
            "atexit.register(lambda: print('teardown ran')); print('before', flush=True); _exit_now(3)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and proc.stdout == "before\n", proc.stdout + proc.stderr
    monkeypatch.setattr(in_process, "_DEPTH", 1)  # inside run_command: compare's process must go on
    with pytest.raises(SystemExit) as stop:
        _exit_now(1)
    assert stop.value.code == 1


def test_an_experiment_renaming_its_task_reruns_in_its_own_run_directory(tmp_path):
    # experiment=... renames task_name, but it is still a `train` run: rerunning it (a resume, or
    # a DDP rank re-running the command) writes into its own folder again.
    run = tmp_path / "renamed"
    args = [*TINY, "experiment=any_scale", "data.input_size=32", "data.output_size=64", "data.scale_range=[1.5,2]",
            "data.val_scales=[2]", f"hydra.run.dir={run}"]
    for attempt in range(2):
        proc = _command("train", *args, cwd=tmp_path)
        assert proc.returncode == 0, (attempt, proc.stderr[-2000:])
    assert (run / "checkpoints" / "last.ckpt").is_file()
