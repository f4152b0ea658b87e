"""trainer=ddp: Lightning DDP on 2 CPU processes (gloo), one run directory; the multirun pitfall.
Its host syncs between logging steps are traced in tests/run/test_host_syncs.py."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict, read_write

from joint_colsr.run.hydra_callbacks import check_ddp_launch

from ._cli import output_tail, run_train

# 8 crops per epoch, batch 4: one process takes 2 steps per epoch, each of 2 ranks takes 1.
DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "debug=tiny"]


def test_ddp_two_gloo_processes_share_one_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train([*DDP_CPU, f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 1, "each of the 2 ranks should take half of the epoch's 2 batches"
    # Lightning re-ran the command for rank 1 with hydra.run.dir pointing at the same directory.
    assert (run_dir / "train_ddp_process_1.log").exists()
    assert not (tmp_path / "outputs").exists(), "a DDP child process made a run directory of its own"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def _as_multirun(cfg):
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_script_relaunching_ddp_is_refused_inside_a_local_multirun(compose_cfg, monkeypatch):
    for key in ("LOCAL_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="trainer.strategy=ddp_spawn"):
        check_ddp_launch(_as_multirun(compose_cfg(DDP_CPU)))
    check_ddp_launch(_as_multirun(compose_cfg([*DDP_CPU, "trainer.strategy=ddp_spawn"])))  # spawn is fine
    check_ddp_launch(_as_multirun(compose_cfg([*DDP_CPU, "trainer.devices=1"])))  # one process: nothing re-launched
    monkeypatch.setenv("SLURM_NTASKS", "2")  # srun started the ranks: Lightning launches nothing
    check_ddp_launch(_as_multirun(compose_cfg(DDP_CPU)))


@pytest.mark.slow
def test_ddp_spawn_runs_inside_a_multirun(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_train(["-m", *DDP_CPU, "trainer.strategy=ddp_spawn", "seed=0", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert "val/psnr" in metrics
    # The spawned ranks trained; the checkpoint holds their step count (1 each: the epoch was
    # sharded), and metrics.json reports it although this process's trainer never stepped.
    ckpt = torch.load(sweep_dir / "0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1
    assert metrics["global_step"] == 1 and metrics["epochs"] == ckpt["epoch"] + 1


def test_srgan_trains_under_ddp_with_generator_and_discriminator_in_step_on_every_rank(tmp_path):
    """Two backward passes per step, each leaving the other network unused: DDP finds them
    (GANSystem.DDP_FIND_UNUSED_PARAMETERS), and both networks' gradients are all-reduced, so
    the two ranks, fed different photos, end with the same weights, which moved."""
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    proc = run_train([*DDP_CPU, "model=srgan", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}",
                      "+callbacks.probe._target_=tests.ddp_probe.RecordWeights", f"+callbacks.probe.out_dir={probe}"], tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    assert "ddp_find_unused_parameters_true" in (run_dir / "train.log").read_text()
    start, end = (torch.load(probe / f"rank0{s}.pt") for s in ("_start", ""))
    other = torch.load(probe / "rank1.pt")
    assert end.keys() == other.keys()
    for prefix in ("net.", "discriminator."):
        keys = [k for k in end if k.startswith(prefix)]
        assert keys, prefix
        assert all(torch.equal(end[k], other[k]) for k in keys), f"the ranks' {prefix[:-1]} weights differ"
        assert any(not torch.equal(end[k], start[k]) for k in keys), f"{prefix[:-1]} did not train"
