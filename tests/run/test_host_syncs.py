"""No host sync in a training step between logging steps (what would make a GPU wait), found on CPU.

A few training steps of the paper's recipe (and of the default callbacks under trainer=gpu)
run under :class:`~joint_colsr.run.syncs.HostReadRecorder`, which records every call that would
block the host on CUDA (``.item()``, ``bool(t)``, ``.cpu()``, ``torch.tensor(..., device=)``...)
and the training batch it belongs to. Only the first batch (start-up), the logging batches
(every ``trainer.log_every_n_steps``: Lightning reads the logged values there) and the end of
the epoch (validation, checkpoints) may read.
"""

from __future__ import annotations

import collections
import types

import lightning.pytorch as pl
import pytest

from joint_colsr.run.callbacks import StopOnNonFinite
from joint_colsr.run.syncs import HostReadRecorder, SyncDebug
from joint_colsr.train import train

LOG_EVERY = 4
STEPS = 12

TINY = ["data=samples", "trainer.accelerator=cpu", "model.net.width_mult=0.0625", "data.batch_size=2",
        "data.num_workers=0", f"data.train_samples_per_epoch={2 * STEPS}", "data.val_views=1", "trainer.max_epochs=1",
        "trainer.limit_val_batches=1", f"trainer.log_every_n_steps={LOG_EVERY}", "logger=csv"]


def _reads_per_batch(cfg, monkeypatch) -> dict[int, list]:
    trainers: list[pl.Trainer] = []
    fit = pl.Trainer.fit

    def recording_fit(self, *args, **kwargs):
        trainers.append(self)
        return fit(self, *args, **kwargs)

    def batch_index() -> int:  # the training batch being run (its step, backward, hooks and logging)
        return trainers[0].fit_loop.epoch_loop.batch_progress.total.ready - 1 if trainers else -1

    monkeypatch.setattr(pl.Trainer, "fit", recording_fit)
    with HostReadRecorder(step_of=batch_index) as recorder:
        train(cfg)
    return recorder.per_step()


def _between_logging_steps(per_batch: dict[int, list]) -> dict[int, list]:
    allowed = {-1, 0} | {b for b in range(STEPS) if (b + 1) % LOG_EVERY == 0}
    return {b: collections.Counter(f"{r.call} at {r.where}" for r in reads) for b, reads in per_batch.items() if b not in allowed}


@pytest.mark.parametrize("overrides", [
    ["experiment=paper"],
    # The suite's default callbacks (with the EMA) under trainer=gpu; the NaN check as
    # check_every_n_steps=auto resolves on a GPU.
    ["trainer=gpu", f"callbacks.stop_on_non_finite.check_every_n_steps={LOG_EVERY}"],
    # The GAN (manual optimization, two optimizer steps per batch, its own generator EMA);
    # float32 because CPUs lack bf16 antialiased bicubic.
    ["trainer=gpu", "trainer.precision=32-true", "model=srgan", "model.net.blocks=1", "model.discriminator.width_mult=0.0625",
     "model.ema_decay=0.9", f"callbacks.stop_on_non_finite.check_every_n_steps={LOG_EVERY}"],
], ids=["paper", "trainer_gpu", "trainer_gpu_srgan"])
def test_no_host_sync_between_logging_steps(overrides, compose_cfg, monkeypatch):
    per_batch = _reads_per_batch(compose_cfg([*overrides, *TINY]), monkeypatch)
    assert _between_logging_steps(per_batch) == {}
    # The recorder sees what it should: Lightning reads the logged loss at each logging step.
    assert any(r.call == "item" for r in per_batch.get(LOG_EVERY - 1, [])), per_batch


def test_a_per_step_read_is_caught(compose_cfg, monkeypatch):
    # The control: the NaN check read every step (check_every_n_steps=1) is a per-step sync.
    per_batch = _reads_per_batch(compose_cfg(["experiment=paper", *TINY, "callbacks.stop_on_non_finite.check_every_n_steps=1"]),
                                 monkeypatch)
    found = _between_logging_steps(per_batch)
    assert set(found) == {b for b in range(1, STEPS) if (b + 1) % LOG_EVERY}
    assert all("callbacks.py" in where for counts in found.values() for where in counts)


def test_nan_check_auto_reads_at_logging_steps_on_accelerators():
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    for accelerator, expected in ((CPUAccelerator(), 1), (CUDAAccelerator(), 7)):
        guard = StopOnNonFinite(check_every_n_steps="auto")
        trainer = types.SimpleNamespace(accelerator=accelerator, log_every_n_steps=7, global_step=0)
        guard.on_train_start(trainer, None)
        assert guard.check_every_n_steps == expected
    with pytest.raises(ValueError, match="check_every_n_steps"):
        StopOnNonFinite(check_every_n_steps="sometimes")


def test_speed_sync_debug_adds_the_callback_and_checks_its_value(compose_cfg):
    from joint_colsr.assembly import build_callbacks
    from joint_colsr.run.config_checks import ConfigError, check_config

    cfg = compose_cfg(["debug=tiny", "speed.sync_debug=error"])
    check_config(cfg)
    assert [c.mode for c in build_callbacks(cfg) if isinstance(c, SyncDebug)] == ["error"]
    assert not any(isinstance(c, SyncDebug) for c in build_callbacks(compose_cfg(["debug=tiny"])))
    with pytest.raises(ConfigError, match="speed.sync_debug"):
        check_config(compose_cfg(["debug=tiny", "speed.sync_debug=loud"]))
    with pytest.raises(ValueError, match="speed.sync_debug"):
        SyncDebug("loud")
