"""When DDP ranks decide together on a SLURM requeue: after logging batches (no extra sync)."""

from __future__ import annotations

import types

import pytest

from joint_colsr.run.slurm_requeue import RequeueOnSlurmSignal


def _decided(callback: RequeueOnSlurmSignal, log_every: int, batches: int) -> list[int]:
    loop = types.SimpleNamespace(_batches_that_stepped=0)
    trainer = types.SimpleNamespace(log_every_n_steps=log_every, fit_loop=types.SimpleNamespace(epoch_loop=loop))
    decided = []
    for batch in range(batches):
        loop._batches_that_stepped = batch  # in on_train_batch_end: this batch is not counted yet
        if callback.decides_after_this_batch(trainer):
            decided.append(batch)
    return decided


def test_ddp_ranks_decide_on_a_requeue_after_the_logging_batches_only():
    # Logging batches are those with (batch + 1) % log_every_n_steps == 0 (tests/run/test_host_syncs.py).
    assert _decided(RequeueOnSlurmSignal(), log_every=4, batches=12) == [3, 7, 11]
    assert _decided(RequeueOnSlurmSignal(), log_every=50, batches=120) == [49, 99]
    assert _decided(RequeueOnSlurmSignal(sync_every_n_steps=8), log_every=4, batches=20) == [7, 15]
    with pytest.raises(ValueError, match="sync_every_n_steps must be >= 1 or null"):
        RequeueOnSlurmSignal(sync_every_n_steps=0)
