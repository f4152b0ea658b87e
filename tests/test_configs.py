"""Every config group option composes; wrong configs fail at start-up with a clear message."""

import re
import subprocess
import sys

import pytest
import torch

from joint_colsr.assembly import build_datamodule, build_system, resolved_config
from joint_colsr.run.config_checks import ConfigError, check_config

from .conftest import CONF_DIR, REPO, hang_bound


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group", ["model", "data", "trainer", "logger", "callbacks", "experiment", "debug", "paths", "hydra"]
)
def test_every_option_composes(group, compose_cfg, image_folder):
    options = _options(group)
    assert options, f"conf/{group} is empty"
    for option in options:
        overrides = [f"{group}={option}", f"data.root={image_folder}"]
        if group == "data" and option == "samples":
            overrides = [f"{group}={option}"]
        cfg = compose_cfg(overrides if group in ("data", "experiment") else [f"{group}={option}"])
        resolved_config(cfg)  # every interpolation resolves


def test_default_config_is_the_paper_net_on_samples(compose_cfg):
    cfg = compose_cfg()
    assert cfg.data.source._target_.endswith("SamplePhotos")
    assert cfg.model.net._target_.endswith("JointPaperNet")
    assert cfg.model.net.input_size == 96 and cfg.model.net.output_size == 256
    assert cfg.seed == 0
    check_config(cfg)


def test_paper_experiment_is_the_paper_recipe(compose_cfg):
    cfg = compose_cfg(["experiment=paper", "data.root=/nowhere"])
    assert cfg.data.batch_size == 160
    assert cfg.trainer.max_epochs == 148
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 1e-4
    assert cfg.model.scheduler._target_.endswith("ReduceLROnPlateau") and cfg.model.scheduler.factor == 0.75
    # Section III-A: each whole image downscaled to 256x256, L* to 96x96; no crop, no flip named.
    assert (cfg.data.output_size, cfg.data.input_size, cfg.data.train_crop, cfg.data.hflip) == (256, 96, "whole", False)
    # COCO is not at /nowhere: start-up fails naming the path and the layout.
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        build_datamodule(cfg)


def test_system_config_builds_and_round_trips(compose_cfg):
    cfg = compose_cfg(["debug=tiny"])
    system = build_system(cfg)
    assert system.hparams.net["width_mult"] == 0.0625
    assert not any(isinstance(v, object.__class__) for v in system.hparams.values())


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["data=folder"], r"data.root must be set"),
        (["model.net.input_size=64"], r"model.net.input_size=64 does not match data.input_size=96"),
        (["data.input_size=300"], r"data.input_size \(300\)"),
        (["data.batch_size=0"], r"data.batch_size"),
        (["trainer.use_distributed_sampler=true"], r"use_distributed_sampler"),
        pytest.param(["trainer=gpu"], r"trainer=gpu. but torch sees no GPU.*trainer=cpu",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
    ],
)
def test_bad_configs_fail_at_startup(compose_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        check_config(compose_cfg(overrides))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "joint_colsr.train", *args, "hydra.run.dir=/tmp/joint_colsr_cli_test", "trainer.max_epochs=0"],
        cwd=REPO, capture_output=True, text=True, timeout=hang_bound(300),
    )


def test_unknown_config_name_lists_the_choices():
    result = _cli("model=nonexistent")
    assert result.returncode != 0
    assert "model/nonexistent" in result.stderr and "joint_paper" in result.stderr


def test_missing_data_root_fails_before_reading_data(tmp_path):
    result = _cli("data=folder", f"data.root={tmp_path / 'missing'}")
    assert result.returncode != 0
    assert "missing" in result.stderr and "expected a folder holding image files" in result.stderr


@pytest.mark.parametrize("model", ["joint_paper", "srgan"])
def test_plain_hydra_instantiate_of_the_model_group_gives_the_system(compose_cfg, model):
    """How Hydra users build a model in a notebook: hydra.utils.instantiate(cfg.model)."""
    from hydra.utils import instantiate

    from joint_colsr.systems import ColSRSystem, GANSystem

    extra = ["model.net.blocks=1", "model.net.width_mult=0.0625", "model.discriminator.width_mult=0.0625"] if model == "srgan" \
        else ["model.net.width_mult=0.0625"]
    system = instantiate(compose_cfg([f"model={model}", *extra]).model)
    assert type(system) is (GANSystem if model == "srgan" else ColSRSystem)
    assert system.hparams.optimizer["lr"] == 1e-4 and system.hparams.scheduler["factor"] == 0.75  # the shared recipe


def test_common_trainer_arguments_need_no_plus(compose_cfg):
    from joint_colsr.assembly import build_trainer

    cfg = compose_cfg(["debug=tiny", "trainer.max_steps=5", "trainer.gradient_clip_val=1.0", "trainer.accumulate_grad_batches=2",
                       "trainer.max_time=00:01:00:00", "trainer.val_check_interval=0.5", "trainer.num_sanity_val_steps=0"])
    check_config(cfg)
    trainer = build_trainer(cfg)
    assert trainer.max_steps == 5 and trainer.gradient_clip_val == 1.0 and trainer.accumulate_grad_batches == 2
    assert trainer.val_check_interval == 0.5 and trainer.num_sanity_val_steps == 0


def test_every_model_shares_the_recipe_through_defaults():
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        text = path.read_text()
        assert not re.search(r"^(optimizer|scheduler):", text, re.M), f"{path.name} repeats the recipe"
        assert "_recursive_: false" in text, path.name


def test_trainer_ddp_keeps_the_gpu_recipe_on_gpus_and_float32_on_cpus(compose_cfg):
    from omegaconf import OmegaConf

    gpu = compose_cfg(["experiment=paper", "trainer=ddp", "trainer.accelerator=gpu"]).trainer
    assert (gpu.precision, gpu.benchmark, gpu.strategy) == ("bf16-mixed", True, "ddp")
    reference = compose_cfg(["experiment=paper"]).trainer  # the paper recipe runs under trainer=gpu
    assert {k: gpu[k] for k in reference if k not in ("accelerator", "devices")} == \
        {k: reference[k] for k in reference if k not in ("accelerator", "devices")}
    cpu = compose_cfg(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]).trainer
    assert (cpu.precision, cpu.benchmark) == ("32-true", False)
    # auto follows CUDA's presence, as Lightning's own choice does (no CUDA in tests).
    auto = OmegaConf.to_container(compose_cfg(["trainer=ddp"]).trainer, resolve=True)
    assert auto["precision"] == "32-true" and auto["benchmark"] is False
