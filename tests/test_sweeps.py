"""Multirun sweeps (conf/sweep/*): they compose, their tiny forms run, a failing job is reported."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

from joint_colsr.assembly import resolved_config
from joint_colsr.run.config_checks import check_config
from joint_colsr.run.hydra_callbacks import aggregate_over_seeds, confidence_interval

from ._cli import output_tail, run_train
from .conftest import CONF_DIR, hang_bound

SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
MODELS = {p.stem for p in (CONF_DIR / "model").glob("*.yaml")}


def _needs_models(*names: str) -> None:
    missing = sorted(set(names) - MODELS)
    if missing:
        pytest.skip(f"conf/model has no {', '.join(missing)} yet (another helper adds it)")


def _sweep_models(name: str) -> set[str]:
    """Models a sweep selects: its `override /model` and any `model` axis of its grid."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "sweep" / f"{name}.yaml"))
    models = set()
    for entry in raw.get("defaults", []):
        if isinstance(entry, dict) and "override /model" in entry:
            models.add(entry["override /model"])
    axis = raw.get("hydra", {}).get("sweeper", {}).get("params", {}).get("model")
    if axis:
        models |= {m.strip() for m in str(axis).split(",")}
    return models


def _axis_values(text: str) -> list[str]:
    """A sweep axis' values: split at the commas outside brackets (``[1.5,4.0],[2.0,4.0]``: two lists)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    return [*values, current.strip()]


def _summary(sweep_dir) -> dict:
    return json.loads((sweep_dir / "sweep_summary.json").read_text())


def test_the_four_sweeps_exist():
    assert {"section4", "variants", "seeds", "optuna"} <= set(SWEEPS)


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_composes_and_every_grid_value_composes(name, compose_cfg):
    _needs_models(*_sweep_models(name))
    cfg = compose_cfg([f"sweep={name}", "debug=tiny"])
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params, f"sweep={name} declares no hydra.sweeper.params"
    assert cfg.task_name == name  # outputs/<sweep>/multiruns/<date>
    if name == "optuna":
        assert cfg.hydra.sweeper.direction == "maximize" and cfg.optimized_metric == "val/psnr_joint"
        assert set(params) == {"model.optimizer.lr", "model.net.width_mult"}
        return
    # Each value of each axis (the others at their first value) composes and passes start-up checks.
    axes = {key: _axis_values(str(values)) for key, values in params.items()}
    firsts = {key: values[0] for key, values in axes.items()}
    for key, values in axes.items():
        for value in values:
            job = {**firsts, key: value}
            job_cfg = compose_cfg([f"sweep={name}", "debug=tiny", *(f"{k}={v}" for k, v in job.items())])
            check_config(job_cfg)
            resolved_config(job_cfg)


def test_variants_sweep_fixes_one_training_budget(compose_cfg):
    cfg = compose_cfg(["sweep=variants"])
    assert cfg.hydra.sweeper.params.model.split(",") == ["joint_paper", "ic_only", "sr_only", "cascade", "residual_joint", "srgan"]
    assert (cfg.data.batch_size, cfg.data.train_samples_per_epoch, cfg.trainer.max_epochs) == (16, 320, 12)


def test_slurm_launcher_follows_the_trainer(compose_cfg):
    cfg = compose_cfg(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.cpus_per_task == 1 + cfg.data.num_workers  # the training process and its data workers


def test_slurm_launcher_sizes_cpu_jobs_and_refuses_devices_auto_on_gpus(compose_cfg):
    from omegaconf.errors import InterpolationResolutionError

    cpu = compose_cfg(["hydra/launcher=slurm", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=auto",
                       "data.num_workers=3"]).hydra.launcher
    assert (cpu.tasks_per_node, cpu.gpus_per_node, cpu.nodes, cpu.cpus_per_task) == (1, None, 1, 4)
    plain = compose_cfg(["hydra/launcher=slurm"]).hydra.launcher  # trainer=default has no num_nodes
    assert (plain.nodes, plain.tasks_per_node) == (1, 1)
    listed = compose_cfg(["hydra/launcher=slurm", "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=[0,1]"])
    assert (listed.hydra.launcher.tasks_per_node, listed.hydra.launcher.gpus_per_node) == (2, 2)
    gpu = compose_cfg(["hydra/launcher=slurm", "trainer=ddp"])  # devices=auto, accelerator=auto
    with pytest.raises(InterpolationResolutionError, match="trainer.devices=N"):
        _ = gpu.hydra.launcher.tasks_per_node


def test_confidence_interval_matches_student_t():
    stats = confidence_interval([20.0, 21.0, 22.0])
    assert stats["mean"] == pytest.approx(21.0) and stats["std"] == pytest.approx(1.0)
    assert stats["ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) = 4.3027
    assert confidence_interval([5.0])["ci95"] is None


def test_aggregate_groups_by_everything_but_the_seed():
    jobs = [
        {"num": i, "status": "COMPLETED", "overrides": [f"seed={s}", f"model={m}"], "metrics": {"val/psnr": p}}
        for i, (s, m, p) in enumerate([(0, "a", 20.0), (1, "a", 22.0), (0, "b", 25.0)])
    ] + [{"num": 3, "status": "FAILED", "overrides": ["seed=1", "model=b"], "metrics": {}}]
    groups = {tuple(g["overrides"]): g for g in aggregate_over_seeds(jobs)}
    assert groups[("model=a",)]["metrics"]["val/psnr"]["mean"] == pytest.approx(21.0)
    assert groups[("model=a",)]["jobs"] == [0, 1]
    assert groups[("model=b",)]["metrics"]["val/psnr"]["n"] == 1  # the failed job is not averaged


def test_failing_job_is_reported_and_the_others_finish(tmp_path):
    """Issue 8: job 0 fails on purpose (batch size 0); job 1 still trains; the summary says why."""
    sweep_dir = tmp_path / "sweep"
    proc = run_train(["-m", "debug=fdr", "model.net.width_mult=0.0625", "data.batch_size=0,2", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode != 0, "a sweep with a failed job must exit non-zero"
    summary = _summary(sweep_dir)
    assert (summary["total"], summary["completed"], summary["failed"]) == (2, 1, 1)
    failed = summary["failed_jobs"][0]
    assert failed["num"] == 0 and "data.batch_size=0" in failed["overrides"]
    assert "ConfigError" in failed["error"] and "data.batch_size" in failed["error"]
    assert "ConfigError" in (sweep_dir / "0" / "error.txt").read_text()
    done = summary["jobs"][1]
    assert done["status"] == "COMPLETED" and done["metrics"]["global_step"] == 1
    assert (sweep_dir / "1" / "metrics.json").exists(), output_tail(proc)
    assert "| 0 | FAILED |" in (sweep_dir / "sweep_summary.md").read_text()


@pytest.mark.slow
def test_seeds_sweep_on_submitit_local_gives_a_confidence_interval(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_train(["-m", "sweep=seeds", "hydra/launcher=submitit_local", "debug=fdr", "model.net.width_mult=0.0625",
                      "data.batch_size=2", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    assert (sweep_dir / ".submitit").is_dir()  # the jobs really went through submitit
    summary = _summary(sweep_dir)
    assert summary["completed"] == 2
    (group,) = summary["over_seeds"]
    assert sorted(group["jobs"]) == [0, 1] and not any(o.startswith("seed=") for o in group["overrides"])
    psnr = group["metrics"]["val/psnr"]
    assert psnr["n"] == 2 and math.isfinite(psnr["mean"]) and psnr["ci95"] is not None
    assert "over seeds" in (sweep_dir / "sweep_summary.md").read_text()


def test_optuna_sweep_maximizes_val_psnr(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_train(["-m", "sweep=optuna", "debug=fdr", "data.batch_size=2", "hydra.sweeper.n_trials=2",
                      "model.net.width_mult=choice(0.0625,0.125)", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    result = OmegaConf.to_container(OmegaConf.load(sweep_dir / "optimization_results.yaml"))
    assert set(result["best_params"]) == {"model.optimizer.lr", "model.net.width_mult"}
    jobs = _summary(sweep_dir)["jobs"]
    assert len(jobs) == 2
    # main() returned val/psnr_joint (the whole joint output) to the sweeper, and the best trial is the best of them.
    for job in jobs:
        assert job["return_value"] == pytest.approx(job["metrics"]["val/psnr_joint"])
    assert result["best_value"] == pytest.approx(max(j["return_value"] for j in jobs))


@pytest.mark.slow
def test_variants_sweep_tiny_joint_vs_cascade(tmp_path):
    _needs_models("joint_paper", "cascade")
    sweep_dir = tmp_path / "sweep"
    proc = run_train(["-m", "sweep=variants", "debug=tiny", "model=joint_paper,cascade", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    jobs = _summary(sweep_dir)["jobs"]
    assert [j["status"] for j in jobs] == ["COMPLETED", "COMPLETED"]
    budgets = []
    for job in jobs:
        cfg = OmegaConf.load(f"{job['output_dir']}/.hydra/config.yaml")
        budgets.append((cfg.data.batch_size, cfg.data.train_samples_per_epoch, cfg.trainer.max_epochs, job["metrics"]["epochs"]))
        assert job["metrics"]["fit_seconds"] > 0
    assert budgets[0] == budgets[1]


@pytest.mark.slow
def test_section4_sweep_tiny(tmp_path):
    _needs_models("residual_joint")
    sweep_dir = tmp_path / "sweep"
    proc = run_train(["-m", "sweep=section4", "debug=tiny", "model.net.blocks=1", "model.net.width=64",
                      "data.input_size=48,96", "model.net.l_source=gt", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    jobs = _summary(sweep_dir)["jobs"]
    assert [j["status"] for j in jobs] == ["COMPLETED", "COMPLETED"]
    assert {OmegaConf.load(f"{j['output_dir']}/.hydra/config.yaml").data.input_size for j in jobs} == {48, 96}
    # Fed the ground-truth L*: labelled in every job record and every row of the summary.
    assert all(j["uses_ground_truth_l"] for j in jobs)
    rows = [line for line in (sweep_dir / "sweep_summary.md").read_text().splitlines() if "| COMPLETED |" in line]
    assert len(rows) == 2 and all("GT-L* guided" in row for row in rows)


def test_every_sweep_has_a_one_command_script_that_runs(tmp_path):
    import os
    import subprocess
    import sys

    from .conftest import REPO

    sweeps = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
    scripts = sorted(p.stem for p in (REPO / "experiments").glob("*.sh"))
    assert scripts == sweeps
    assert all(os.access(REPO / "experiments" / f"{s}.sh", os.X_OK) for s in scripts)
    env = {**os.environ, "PYTHON": sys.executable, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(REPO / "experiments" / "seeds.sh"), "debug=tiny", "seed=0,1", f"hydra.sweep.dir={tmp_path}"],
                          env=env, capture_output=True, text=True, timeout=hang_bound(300))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert summary["completed"] == 2 and summary["failed"] == 0


@pytest.mark.parametrize("second_seed_psnr, agree", [(20.0001, True), (20.4, False)])
def test_seed_table_says_why_seeds_agree_instead_of_a_bare_zero_interval(second_seed_psnr, agree):
    from joint_colsr.run.hydra_callbacks import SEEDS_AGREE_NOTE, _markdown

    jobs = [{"num": i, "status": "COMPLETED", "overrides": ["debug=tiny", f"seed={i}"], "error": None,
             "metrics": {"val/psnr": psnr}} for i, psnr in enumerate([20.0, second_seed_psnr])]
    summary = {"sweep_dir": "s", "completed": 2, "failed": 0, "interrupted": 0, "total": 2, "jobs": jobs,
               "over_seeds": aggregate_over_seeds(jobs)}
    md = _markdown(summary)
    row = next(line for line in md.splitlines() if line.startswith("| debug=tiny | 2 |"))
    assert (SEEDS_AGREE_NOTE in md) is agree
    assert (" 0.000 |" in row) is False  # a tiny spread is written with its digits, never as 0.000
