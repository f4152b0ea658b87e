"""Every command in pyproject's [project.scripts] points at a real callable, and is installed."""

import importlib
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import REPO

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
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "baseline: gray" in proc.stdout  # the composed eval config, printed by Hydra
