"""Runs on a real SLURM cluster (one node, this machine; the ``slurm_cluster`` fixture):
a sweep submitted by ``hydra/launcher=slurm`` through submitit, 2-task DDP under SLURM, and
a job that gets SLURM's warning signal, is requeued and resumes to the weights of an
uninterrupted run. They skip, saying why, where SLURM is not installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .._cli import output_tail, run_train
from ..conftest import REPO, checkpoint_weights, hang_bound

LAUNCHER = ["hydra/launcher=slurm"]


def _sbatch_script(sweep_dir: Path) -> str:
    (script,) = sweep_dir.glob(".submitit/*/*_submission.sh")
    return script.read_text()


def _summary(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep_summary.json").read_text())


def test_local_cluster_is_this_machine(slurm_cluster):
    node = slurm_cluster.run("scontrol", "show", "node").stdout
    fields = dict(item.split("=", 1) for item in node.split() if "=" in item)
    assert int(fields["CPUTot"]) == len(os.sched_getaffinity(0))
    mem_total_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    assert 0 < int(fields["RealMemory"]) < mem_total_mb
    assert fields["State"] == "IDLE"
    assert "ProctrackType=proctrack/linuxproc" in slurm_cluster.conf.read_text()


@pytest.mark.slow
def test_sweep_through_sbatch_reports_the_failed_job(slurm_cluster, tmp_path):
    """Job 0 fails on purpose (batch size 0); job 1 trains; both went through sbatch."""
    sweep_dir = tmp_path / "sweep"
    proc = run_train(["-m", *LAUNCHER, "debug=tiny", "data.batch_size=0,4", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode != 0, "a sweep with a failed job must exit non-zero"
    script = _sbatch_script(sweep_dir)
    # One array job, sized from the config: 1 task (trainer.devices=1), CPU only, 1 CPU (no workers).
    for line in ("--array=0-1%2", "--ntasks-per-node=1", "--cpus-per-task=1", "--requeue", "--signal=USR2@120"):
        assert f"#SBATCH {line}" in script, script
    assert "--gpus-per-node" not in script
    summary = _summary(sweep_dir)
    assert (summary["total"], summary["completed"], summary["failed"]) == (2, 1, 1), output_tail(proc)
    failed, done = summary["jobs"]
    assert failed["status"] == "FAILED" and "data.batch_size=0" in failed["overrides"]
    assert "ConfigError" in failed["error"] and "data.batch_size" in failed["error"]
    # The job ran as a SLURM array task; its scheduler log names the failure too.
    assert re.fullmatch(r"\d+_0", failed["scheduler_job_id"])
    assert "data.batch_size=0" in Path(failed["log_err"]).read_text()
    assert failed["log_err"] in (sweep_dir / "sweep_summary.md").read_text()
    assert done["status"] == "COMPLETED" and re.fullmatch(r"\d+_1", done["scheduler_job_id"])
    assert done["metrics"]["global_step"] == 2 and "val/psnr" in done["metrics"]
    assert (sweep_dir / "1" / "checkpoints" / "last.ckpt").is_file()
    assert (sweep_dir / "1" / "metrics.json").is_file()
    # The launcher returns once the job's result file exists; SLURM may still list the task as
    # completing for a moment after that (epilog, accounting), longer on a loaded machine. Wait,
    # with a deadline that only bounds a hang, instead of racing the scheduler.
    slurm_cluster.wait_until_empty(timeout=hang_bound(180))


@pytest.mark.slow
def test_ddp_two_tasks_under_slurm(slurm_cluster, tmp_path):
    """srun starts 2 tasks; Lightning takes its ranks from SLURM; each epoch is split between
    them with no photo twice; validation metrics are reduced; only rank 0 writes checkpoints."""
    sweep_dir, probe = tmp_path / "sweep", tmp_path / "probe"
    proc = run_train(["-m", *LAUNCHER, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "debug=tiny",
                      "trainer.max_epochs=2", "+callbacks.probe._target_=tests.slurm_probe.RecordRanks",
                      f"+callbacks.probe.out_dir={probe}", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    assert "#SBATCH --ntasks-per-node=2" in _sbatch_script(sweep_dir)
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, rank in enumerate(ranks):
        assert rank["environment"] == "SLURMEnvironment"
        assert (rank["global_rank"], rank["world_size"], rank["slurm_procid"]) == (r, 2, str(r))
    assert ranks[0]["pid"] != ranks[1]["pid"]
    # debug=tiny: 8 crops of the 8 training photos per epoch (index i is photo i % 8), batch 4.
    for epoch in ("0", "1"):
        a, b = (rank["train_indices"][epoch] for rank in ranks)
        assert len(a) == len(b) == 4
        assert sorted(a + b) == list(range(8)), f"epoch {epoch}: ranks saw {a} and {b}"
    assert ranks[0]["train_indices"]["0"] != ranks[0]["train_indices"]["1"], "the same order in both epochs"
    # The two ranks validated on different photos and report one value: reduced across ranks.
    assert set(ranks[0]["val_indices"]).isdisjoint(ranks[1]["val_indices"])
    assert ranks[0]["val_psnr"] == ranks[1]["val_psnr"] and len(ranks[0]["val_psnr"]) == 2
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert metrics["val/psnr"] == pytest.approx(ranks[0]["val_psnr"][-1])
    assert metrics["global_step"] == 2, "each rank takes 1 step of 4 crops per epoch"
    assert ranks[0]["saved"] and "last.ckpt" in ranks[0]["saved"] and ranks[1]["saved"] == []
    assert (sweep_dir / "0" / "checkpoints" / "last.ckpt").is_file()
    summary = _summary(sweep_dir)
    assert (summary["total"], summary["completed"]) == (1, 1), "rank 1 recorded a job of its own"


# Deterministic on CPU; one data worker (the job asks for 2 CPUs: the whole node here).
EXACT = ["model.net.width_mult=0.0625", "data.batch_size=2", "data.num_workers=1", "data.train_samples_per_epoch=8",
         "data.val_views=1", "trainer.accelerator=cpu", "trainer.deterministic=true", "trainer.limit_val_batches=1",
         "trainer.max_epochs=2", "callbacks.model_summary.max_depth=0", "callbacks.progress_bar.refresh_rate=0",
         "logger=none", "seed=7"]


@pytest.mark.slow
def test_warning_signal_checkpoints_requeues_and_resumes_to_the_same_weights(slurm_cluster, tmp_path):
    """The job pauses after step 3 of 8; SLURM sends it submitit's warning signal (USR2, as
    before a time limit); it writes last.ckpt, submitit requeues it, SLURM restarts it and it
    resumes there. Its final weights equal those of an uninterrupted run, bit for bit."""
    ref_dir, sweep_dir, marker = tmp_path / "ref", tmp_path / "sweep", tmp_path / "paused"
    # The uninterrupted run, outside SLURM, at the same time.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    reference = subprocess.Popen([sys.executable, "-m", "joint_colsr.train", *EXACT, f"hydra.run.dir={ref_dir}"], cwd=tmp_path,
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sweep = subprocess.Popen([sys.executable, "-m", "joint_colsr.train", "-m", *LAUNCHER, *EXACT,
                              "+callbacks.pause._target_=tests.slurm_probe.PauseForSignal", "+callbacks.pause.step=3",
                              f"+callbacks.pause.marker={marker}", f"hydra.sweep.dir={sweep_dir}"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + hang_bound(180)
        while not marker.exists() and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the job never reached step 3"
        slurm_cluster.run("scancel", "--signal=USR2", marker.read_text())
        out, _ = sweep.communicate(timeout=hang_bound(240))
        _, ref_err = reference.communicate(timeout=hang_bound(240))
    finally:
        for proc in (sweep, reference):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sweep.returncode == 0, out[-3000:]
    assert reference.returncode == 0, ref_err[-3000:]
    runs = [json.loads(line) for line in marker.with_suffix(".runs").read_text().splitlines()]
    assert runs == [{"restart_count": None, "global_step": 0}, {"restart_count": "1", "global_step": 3}], \
        "the job should have been requeued once and resumed after step 3"
    log = (sweep_dir / "0" / "train.log").read_text()
    assert "SIGUSR2 received: wrote" in log and "auto_resume: continuing from" in log
    final = torch.load(sweep_dir / "0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 8
    assert sorted(p.name for p in (sweep_dir / "0" / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    ref = checkpoint_weights(ref_dir / "checkpoints" / "last.ckpt")
    different = [k for k in ref if not torch.equal(ref[k], final["state_dict"][k])]
    assert ref.keys() == final["state_dict"].keys() and not different, f"{len(different)} tensors differ"


@pytest.mark.slow
def test_compare_sends_its_contenders_and_seeds_to_the_cluster_as_one_sweep(slurm_cluster, tmp_path):
    """``compare --launcher slurm``: every pending run is one task of one array job (train, then
    eval, in the task's process); the comparison is written from what the tasks left, and a
    second identical compare submits nothing."""
    out = tmp_path / "cmp"
    argv = [sys.executable, "-m", "joint_colsr.compare", "--models", "joint_paper", "ic_only", "--seeds", "0",
            "--budget-steps", "35", "--train", "debug=tiny", "logger=none", "data.train_samples_per_epoch=40",
            "trainer.limit_train_batches=null", "--eval", "data.val_views=1", "--launcher", "slurm", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=hang_bound(900))
    assert proc.returncode == 0, output_tail(proc)
    (sweep_dir,) = (out / "sweeps").iterdir()
    script = _sbatch_script(sweep_dir)
    for line in ("--array=0-1%", "--ntasks-per-node=1", "--cpus-per-task=1"):
        assert f"#SBATCH {line}" in script, script
    summary = _summary(sweep_dir)
    assert (summary["total"], summary["completed"]) == (2, 2), output_tail(proc)
    assert {re.fullmatch(r"\d+_(\d)", job["scheduler_job_id"]).group(1) for job in summary["jobs"]} == {"0", "1"}
    report = json.loads((out / "comparison.json").read_text())
    for name in ("joint_paper", "ic_only"):
        assert (out / name / "seed0" / "compare_run.json").is_file()
        assert report["contenders"][name]["per_seed"]["0"]["psnr_joint"] is not None
        assert abs(report["contenders"][name]["train_flops"] / report["budget_flops"] - 1) <= 0.02
    slurm_cluster.wait_until_empty(timeout=hang_bound(180))
    again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=hang_bound(600))
    assert again.returncode == 0, output_tail(again)
    assert "(2 of 2 runs reused)" in again.stdout and len(list((out / "sweeps").iterdir())) == 1
