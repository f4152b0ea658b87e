"""callbacks.sample_budget: a run trains on exactly N samples, across epochs and a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from joint_colsr.run.callbacks import TrainingSampleBudget
from joint_colsr.systems.colsr import ColSRSystem
from joint_colsr.train import train

from ..conftest import assert_bitwise_equal, checkpoint_weights
from .test_reliability import EVERY_STEP_CHECKPOINTS, EXACT

# batch 2, 8 samples per epoch: 11 samples = epoch 0 (2+2+2+2), epoch 1 (2 + 1 cut short)
BUDGET = [*EXACT, "data.num_workers=0", "trainer.max_epochs=-1", "callbacks.sample_budget.samples=11"]


@pytest.fixture
def batch_sizes(monkeypatch):
    sizes: list[int] = []
    step = ColSRSystem.training_step

    def recording(self, batch, batch_idx):
        sizes.append(int(batch["l_lowres"].shape[0]))
        assert all(v.shape[0] == sizes[-1] for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim == 4)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ColSRSystem, "training_step", recording)
    return sizes


def test_a_run_trains_on_exactly_the_budgeted_samples(compose_cfg, batch_sizes):
    cfg = compose_cfg(BUDGET)
    metrics = train(cfg)
    assert batch_sizes == [2, 2, 2, 2, 2, 1]
    assert metrics["global_step"] == 6
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()
    batch_sizes.clear()
    again = train(compose_cfg(BUDGET))  # a rerun of the finished run trains nothing
    assert batch_sizes == [] and again["global_step"] == 6


def test_a_resumed_budgeted_run_stops_at_the_same_sample(compose_cfg, tmp_path, batch_sizes):
    over = [*BUDGET, "callbacks.last_checkpoint.every_n_train_steps=1", *EVERY_STEP_CHECKPOINTS]
    straight = compose_cfg(over)
    train(straight)
    ckpts = Path(straight.paths.output_dir) / "checkpoints"
    batch_sizes.clear()
    resumed = compose_cfg([*over, f"ckpt_path={ckpts / 'step5.ckpt'}"])
    resumed.paths.output_dir = str(tmp_path / "resumed")
    metrics = train(resumed)
    assert batch_sizes == [1] and metrics["global_step"] == 6
    assert_bitwise_equal(checkpoint_weights(ckpts / "last.ckpt"),
                         checkpoint_weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt"))


@pytest.mark.parametrize("samples", [0, -3, 2.5, True])
def test_a_budget_that_is_not_a_positive_count_is_refused(samples):
    with pytest.raises(ValueError, match="callbacks.sample_budget.samples must be a positive integer or null"):
        TrainingSampleBudget(samples)


def test_a_gans_warm_up_is_a_fraction_of_the_budgeted_run(compose_cfg, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="joint_colsr.systems.gan")
    # 20 samples at batch 2: 10 generator steps, 10 % of them warm-up; no max_steps, no max_epochs
    metrics = train(compose_cfg(["model=srgan", *EXACT, "data.num_workers=0", "trainer.max_epochs=-1",
                                 "callbacks.sample_budget.samples=20"]))
    assert "discriminator warm-up 1 of 10 generator steps" in caplog.text
    assert metrics["global_step"] == 20  # Lightning counts both optimizers' steps
