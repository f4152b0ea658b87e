"""A wheel works like the editable install: built from the sources, installed into a fresh venv,
its console commands run from an unrelated folder (the Hydra configs ship inside the package)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO, hang_bound


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=hang_bound(timeout),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{cmd} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_trains_from_any_folder(tmp_path):
    # Build from a copy of what the sdist holds (the build writes build/ and *.egg-info beside it).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("joint_colsr", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    # Offline: the build uses this environment's setuptools (a dev dependency).
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-v", "-w", tmp_path / "dist", src],
                 cwd=tmp_path)
    ours = [line for line in (build.stdout + build.stderr).splitlines()
            if "BuildBackendWarning" in line or "would be ignored" in line or "Deprecat" in line]
    assert ours == [], "building the wheel warns about our metadata (pyproject.toml):\n" + "\n".join(ours)
    (wheel,) = (tmp_path / "dist").glob("joint_colsr-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"joint_colsr/{p.relative_to(REPO / 'joint_colsr').as_posix()}" for p in (REPO / "joint_colsr").rglob("*.py")}
    configs = {f"joint_colsr/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert modules - names == set(), "modules missing from the wheel (pyproject's [tool.setuptools] packages)"
    assert configs - names == set(), "configs missing from the wheel (pyproject's package-data)"

    # A fresh venv that sees this environment's dependencies (no multi-GB torch download):
    # a .pth line adds their site-packages after the venv's own, where the wheel goes.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip())
    (purelib / "zz_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1")
    where = _run([python, "-c", "import joint_colsr; print(joint_colsr.__file__); print(joint_colsr.CONFIG_DIR)"], elsewhere, env).stdout
    module_file, config_dir = where.split()
    assert module_file.startswith(str(venv)) and config_dir == str(Path(module_file).parent / "conf")

    bin_dir = venv / "bin"
    assert "Usage: joint-colsr-train" in _run([bin_dir / "joint-colsr-train", "--help"], elsewhere, env).stdout
    run_dir = elsewhere / "run"
    _run([bin_dir / "joint-colsr-train", "debug=tiny", f"hydra.run.dir={run_dir}"], elsewhere, env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and (run_dir / "checkpoints" / "last.ckpt").is_file()
    _run([bin_dir / "joint-colsr-eval", f"ckpt_path={metrics['last_ckpt']}", "num_examples=1", "data.num_workers=0",
          f"hydra.run.dir={elsewhere / 'eval'}"], elsewhere, env)
    assert json.loads((elsewhere / "eval" / "metrics.json").read_text())["num_images"] == 2
