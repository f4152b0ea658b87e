"""Every command in pyproject's [project.scripts] points at a real callable, and is installed."""

import importlib
import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from ._cli import run_command
from .conftest import REPO, hang_bound

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_target_is_a_callable(name):
    module, _, attr = SCRIPTS[name].partition(":")
    assert callable(getattr(importlib.import_module(module), attr)), SCRIPTS[name]


def test_scripts_are_installed_as_declared():
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts") if ep.name.startswith("joint-colsr")}
    assert installed == SCRIPTS  # `make install` (re)installs after pyproject.toml changes


def test_eval_command_runs():
    exe = Path(sys.executable).with_name("joint-colsr-eval")
    proc = subprocess.run([str(exe), "--cfg", "job", "baseline=gray", "data=folder", "data.root=/nowhere"],
                          capture_output=True, text=True, timeout=hang_bound(300))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "baseline: gray" in proc.stdout  # the composed eval config, printed by Hydra


def _command(module: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_command(module, *args, cwd=cwd, env=env)


@pytest.mark.parametrize("module,key", [("train", "trainer.max_steps=N"), ("eval", "ckpt_path=CKPT"),
                                        ("predict", "input_dir=DIR"), ("report", "DIR"), ("preprocess", "cache_dir=DIR")])
def test_help_starts_with_the_commands_own_usage(module, key, tmp_path):
    proc = _command(module, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    head, _, groups = proc.stdout.partition("== Config groups")
    assert head.startswith(f"joint-colsr-{module} ") and "Usage:" in head and "Example:" in head and key in head
    assert "$HOME/" in head or module == "report"  # paths a shell expands (Hydra's grammar rejects ~)
    assert "data: coco, folder, samples" in groups  # then Hydra's groups


def test_config_error_is_one_message_without_traceback(tmp_path):
    proc = _command("train", "data.batch_size=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Error: data.batch_size must be a positive integer, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR=1" in proc.stderr
    full = _command("train", "data.batch_size=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr and "ConfigError" in full.stderr


class BuggyNet(torch.nn.Module):
    """A net whose constructor has a real bug (a shape error inside torch)."""

    def __init__(self, input_size: int = 96, output_size: int = 256) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2, 3) @ torch.zeros(2, 3))


def test_unexpected_error_in_a_constructor_keeps_its_stack(tmp_path):
    proc = _command("train", "model.net._target_=tests.test_entry_points.BuggyNet", "~model.net.width_mult",
                    "~model.net.negative_slope", "~model.net.output_activation", "~model.net.upsample_mode",
                    "~model.net.upsampler", "~model.net.implicit_hidden", "~model.net.implicit_layers",
                    f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "in __init__" in proc.stderr and "test_entry_points.py" in proc.stderr
    assert "mat1 and mat2 shapes cannot be multiplied" in proc.stderr


def test_wandb_without_an_account_says_how_to_run_offline(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = _command("train", "logger=wandb", "debug=tiny", f"hydra.run.dir={tmp_path / 'run'}",
                    cwd=tmp_path, env={"WANDB_MODE": None, "HOME": str(home), "WANDB_CONFIG_DIR": str(home), "NETRC": str(home / "netrc")})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "WANDB_MODE=offline" in proc.stderr and "wandb login" in proc.stderr and "Traceback" not in proc.stderr


def test_wandb_is_imported_only_when_used(tmp_path):
    code = "import sys, joint_colsr.train, joint_colsr.eval, joint_colsr.predict; print('wandb' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=hang_bound(120))
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


@pytest.mark.parametrize("module", ["train", "eval", "predict", "report", "preprocess", "two_stage", "compare", "compare_run", "model_table"])
def test_help_does_not_import_torch_or_lightning(module, tmp_path):
    proc = _command(module, "--help", cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "joint_colsr" in imported, proc.stderr[-2000:]  # the import log is really there
    assert "torch" not in imported and "lightning" not in imported
    argparse_commands = ("compare", "model_table")
    assert ("usage:" in proc.stdout) if module in argparse_commands else ("== Config groups" in proc.stdout)


def test_a_command_line_with_a_positional_argument_is_left_to_the_command(tmp_path):
    from joint_colsr.run import fast_help

    import hydra

    called = []
    saved_argv, real_main = sys.argv, hydra.main
    try:
        sys.argv = ["joint-colsr-report", str(tmp_path), "--help"]  # report DIR --help: report maps DIR itself
        hydra.main = lambda **kw: called.append(kw) or (lambda task: (lambda: None))
        fast_help.answer_help_early("joint_colsr.report", "report")
        sys.argv = ["joint-colsr-report", "--help"]
        fast_help.answer_help_early("joint_colsr.report", "report")
    finally:
        sys.argv, hydra.main = saved_argv, real_main
    assert len(called) == 1 and called[0]["config_name"] == "report"  # only the second one was answered early
