"""Reliability: exact resume (end of epoch, mid-epoch, after SIGKILL), atomic checkpoints,
NaN guards, and config checks that fail at start-up naming the key."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from joint_colsr.assembly import build_system
from joint_colsr.run.callbacks import NonFiniteLossError, StopOnNonFinite
from joint_colsr.run.checkpointing import AtomicCheckpointIO
from joint_colsr.run.resume import find_resume_checkpoint
from joint_colsr.run.config_checks import ConfigError, check_config, check_model_output
from joint_colsr.train import train

from ..conftest import REPO, assert_bitwise_equal, assert_resume_from_step_is_exact, checkpoint_weights, hang_bound

# Tiny, deterministic, with real worker processes: what an exact resume must survive.
EXACT = [
    "model.net.width_mult=0.0625",
    "data.batch_size=2",
    "data.num_workers=2",
    "data.train_samples_per_epoch=8",
    "data.val_views=1",
    "trainer.accelerator=cpu",
    "trainer.deterministic=true",
    "trainer.limit_val_batches=1",
    "callbacks.model_summary.max_depth=0",
    "callbacks.progress_bar.refresh_rate=0",
    "logger=none",
    "seed=7",
]


# A kept checkpoint after every training step, named stepN.ckpt: resume from any step.
EVERY_STEP_CHECKPOINTS = ["+callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1",
                          "callbacks.model_checkpoint.monitor=null", "callbacks.model_checkpoint.filename='step{step}'"]


def test_two_epochs_equal_one_epoch_resumed_to_two(compose_cfg, tmp_path):
    straight = compose_cfg([*EXACT, "trainer.max_epochs=2"])
    train(straight)
    ref = checkpoint_weights(Path(straight.paths.output_dir) / "checkpoints" / "last.ckpt")

    first = compose_cfg([*EXACT, "trainer.max_epochs=1"])
    first.paths.output_dir = str(tmp_path / "b")
    train(first)
    second = compose_cfg([*EXACT, "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}"])
    second.paths.output_dir = str(tmp_path / "b2")
    train(second)
    assert_bitwise_equal(ref, checkpoint_weights(tmp_path / "b2" / "checkpoints" / "last.ckpt"))


def test_mid_epoch_checkpoint_resumes_at_the_right_batch(compose_cfg, tmp_path):
    # 4 steps per epoch; a checkpoint every step; resume from the one after step 2.
    run = assert_resume_from_step_is_exact(compose_cfg, tmp_path, [*EXACT, "trainer.max_epochs=1", *EVERY_STEP_CHECKPOINTS],
                                           step=2, steps=4)
    assert torch.load(run / "checkpoints" / "step2.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_does_not_shorten_the_next_epoch(compose_cfg, tmp_path, workers):
    # Resume from step 2 of epoch 0 (4 steps per epoch) and train 2 epochs: 8 steps, and the
    # weights of an unbroken run (with num_workers=0 epoch 1 used to skip the resume offset).
    over = [*EXACT, f"data.num_workers={workers}", "trainer.max_epochs=2", "+callbacks.model_checkpoint.every_n_train_steps=1",
            "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.monitor=null",
            "callbacks.model_checkpoint.filename='step{step}'"]
    straight = compose_cfg(over)
    train(straight)
    ckpts = Path(straight.paths.output_dir) / "checkpoints"
    resumed = compose_cfg([*over, f"ckpt_path={ckpts / 'step2.ckpt'}"])
    resumed.paths.output_dir = str(tmp_path / "resumed")
    assert train(resumed)["global_step"] == 8
    assert_bitwise_equal(checkpoint_weights(ckpts / "last.ckpt"), checkpoint_weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt"))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_checkpoint_on_the_epochs_last_batch_trains_the_next_epoch(compose_cfg, workers):
    # A step checkpoint written on the last batch of epoch 0 (max_steps stops right there);
    # the rerun without max_steps must train all of epoch 1 (it used to train 0 steps).
    over = [*EXACT, f"data.num_workers={workers}", "trainer.max_epochs=2", "callbacks.last_checkpoint.every_n_train_steps=2"]
    first = compose_cfg([*over, "trainer.max_steps=4"])
    assert train(first)["global_step"] == 4
    again = compose_cfg(over)  # same run dir: auto-resume
    assert train(again)["global_step"] == 8


def test_step_checkpoints_still_write_last_ckpt_at_the_end_of_each_epoch(compose_cfg):
    # every_n_train_steps=3 does not divide the 4 steps of an epoch: last.ckpt must still be
    # written at the end of the epoch (Lightning turns the per-epoch save off unless asked).
    cfg = compose_cfg([*EXACT, "data.num_workers=0", "trainer.max_epochs=1", "callbacks.last_checkpoint.every_n_train_steps=3"])
    train(cfg)
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 4


def _train_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "joint_colsr.train", *EXACT, f"hydra.run.dir={run_dir}",
            "callbacks.last_checkpoint.every_n_train_steps=1", *extra]


def test_sigkill_at_several_points_then_auto_resume(tmp_path):
    """Kill a training process with SIGKILL at several points; rerunning the same run
    directory continues from last.ckpt and ends with the same weights as an unbroken run.
    The process kills itself at a chosen step (tests._faults.SignalAt), so the points do not
    depend on how fast a watcher is scheduled on a loaded machine."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    ref_dir = tmp_path / "ref"
    subprocess.run(_train_cmd(ref_dir, "trainer.max_epochs=3"), cwd=REPO, env=env, check=True, capture_output=True, timeout=hang_bound(600))
    ref = checkpoint_weights(ref_dir / "checkpoints" / "last.ckpt")

    run_dir = tmp_path / "killed"
    last = run_dir / "checkpoints" / "last.ckpt"
    # Epochs have 4 steps. Step 5 follows a resume from inside epoch 0 and ends the epoch-0
    # checkpoint's life (a step save on an epoch's last batch used to make the third resume
    # train a whole extra epoch); "end of epoch 1" dies after its validation, before its save.
    points = (["+callbacks.fault.step=2"], ["+callbacks.fault.step=5"],
              ["+callbacks.fault.epoch_end=true", "+callbacks.fault.epoch=1"], ["+callbacks.fault.step=10"])
    for point in points:
        proc = subprocess.run(_train_cmd(run_dir, "trainer.max_epochs=3", "+callbacks.fault._target_=tests._faults.SignalAt",
                                         "+callbacks.fault.signum=SIGKILL", *point),
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=hang_bound(600))
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])
        # Whatever the moment of death, last.ckpt loads.
        assert find_resume_checkpoint(run_dir) is not None
    done = subprocess.run(_train_cmd(run_dir, "trainer.max_epochs=3"), cwd=REPO, env=env, capture_output=True, text=True, timeout=hang_bound(600))
    assert done.returncode == 0, done.stderr[-2000:]
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["global_step"] == 12
    assert_bitwise_equal(ref, final["state_dict"])


def test_atomic_checkpoint_write_never_leaves_a_broken_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    loaded = torch.load(path, weights_only=False)
    assert loaded["global_step"] == 1 and torch.equal(loaded["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


@pytest.mark.parametrize("every", [1, 4])
def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(compose_cfg, every):
    # An enormous learning rate makes the loss explode within a few steps. A checkpoint is
    # due after every step: with a deferred check (every > 1) the read before each write
    # must still keep the bad weights off the disk.
    cfg = compose_cfg([*EXACT, "data.num_workers=0", "trainer.max_epochs=50", "model.optimizer.lr=1e8",
                       "model.net.output_activation=none", "callbacks.last_checkpoint.every_n_train_steps=1",
                       f"callbacks.stop_on_non_finite.check_every_n_steps={every}"])
    with pytest.raises(NonFiniteLossError, match=r"at global step \d+ \(epoch \d+, batch \d+\)") as info:
        train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert "last good checkpoint" in str(info.value)
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    if every > 1:  # the first bad step is named, and it is the one right after the last good checkpoint
        first_bad = int(re.search(r"first at global step (\d+)", str(info.value)).group(1))
        assert first_bad == ckpt["global_step"]


def test_deferred_nan_check_reads_the_device_only_every_n_steps():
    # On the meta device any host read raises: recording steps must not read, the Nth must.
    from types import SimpleNamespace

    guard = StopOnNonFinite(check_gradients=False, check_every_n_steps=3)
    loop = SimpleNamespace(_batches_that_stepped=0)  # what Lightning counts logging steps by
    trainer = SimpleNamespace(global_step=0, fit_loop=SimpleNamespace(epoch_loop=loop))
    for step in (0, 1):
        trainer.global_step = loop._batches_that_stepped = step
        guard._record(trainer, torch.zeros((), device="meta"))
    trainer.global_step = loop._batches_that_stepped = 2
    with pytest.raises(RuntimeError, match="meta"):
        guard._record(trainer, torch.zeros((), device="meta"))
    with pytest.raises(ValueError, match="check_every_n_steps"):
        StopOnNonFinite(check_every_n_steps=0)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["+model.net.widht_mult=2"], r"unknown key model.net.widht_mult: .*JointPaperNet takes .*width_mult"),
        (["model.net.width_mult=abc"], r"model.net.width_mult='abc' has the wrong type"),
        (["data.num_workers=two"], r"data.num_workers='two' has the wrong type"),
        (["+trainer.max_epoch=3"], r"unknown key trainer.max_epoch"),
        (["model.optimizer._target_=torch.optim.Adamm"], r"model.optimizer._target_='torch.optim.Adamm' cannot be imported"),
    ],
)
def test_config_schema_errors_name_the_key(compose_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        check_config(compose_cfg(overrides))


def test_model_output_size_mismatch_fails_before_data(compose_cfg):
    cfg = compose_cfg(["debug=tiny"])
    system = build_system(cfg)
    check_model_output(system, cfg)
    cfg.data.output_size = 200  # the net (built for 256) cannot produce it
    with pytest.raises(ConfigError, match=r"does not match data.output_size=200"):
        check_model_output(system, cfg)


def test_auto_resume_ignores_a_damaged_last_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"garbage")
    assert find_resume_checkpoint(tmp_path) is None
    assert find_resume_checkpoint(tmp_path / "nothing") is None
