"""report: a multirun directory -> one markdown table of differing overrides and metrics, and a plot."""

import json
import subprocess
import sys

import pytest

from joint_colsr.run.config_checks import ConfigError
from joint_colsr.report import load_runs, report, varying_keys

from .conftest import REPO, compose_config, hang_bound


def _multirun(root, runs):
    """Write runs as Hydra's --multirun lays them out: DIR/<n>/.hydra/overrides.yaml + metrics.json."""
    for n, (overrides, metrics) in enumerate(runs):
        run = root / str(n)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        if metrics is not None:
            (run / "metrics.json").write_text(json.dumps(metrics))
    return root


@pytest.fixture
def sweep(tmp_path):
    runs = []
    for i, width in enumerate(["0.25", "0.5", "1.0"]):
        for j, lr in enumerate(["1e-4", "3e-4"]):
            runs.append(([f"model.net.width_mult={width}", f"model.optimizer.lr={lr}", "debug=tiny"],
                         {"psnr": 20.0 + i + 0.1 * j, "psnr_joint": 19.0 + i, "ssim": 0.9, "params": 1000 * (i + 1), "model": "x"}))
    runs.append((["model.net.width_mult=2.0", "model.optimizer.lr=1e-4", "debug=tiny"], None))  # crashed run
    return _multirun(tmp_path / "multirun", runs)


def test_table_lists_only_differing_overrides_in_run_order(sweep, tmp_path):
    runs = load_runs(sweep)
    assert [r["name"] for r in runs] == ["0", "1", "2", "3", "4", "5"]  # the crashed run 6 is left out
    assert varying_keys(runs) == ["model.net.width_mult", "model.optimizer.lr"]
    written = report(compose_config("report", [f"dir={sweep}", "x=model.net.width_mult"], output_dir=tmp_path / "r"))
    table = (sweep / "report.md").read_text()
    assert "Common to every run: `debug=tiny`" in table
    header = next(line for line in table.splitlines() if line.startswith("| run"))
    assert header.split(" | ")[1:3] == ["model.net.width_mult", "model.optimizer.lr"]
    assert "| 5 | 1.0 | 3e-4 | 22.10 |" in table
    assert "| 3000 |" in table and "3000.00" not in table  # counts print as integers
    assert written["metrics"][:3] == ["psnr", "psnr_joint", "ssim"] and "model" not in written["metrics"]
    png = sweep / "report_psnr.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_takes_the_directory_positionally(sweep, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "joint_colsr.report", str(sweep), f"out_dir={out}", "metric=psnr_joint",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, capture_output=True, text=True, timeout=hang_bound(300),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "report.md").exists() and (out / "report_psnr_joint.png").exists()


def test_errors_name_the_problem(tmp_path, sweep):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no runs"):
        report(compose_config("report", [f"dir={tmp_path / 'empty'}"], output_dir=tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"metrics \['nope'\] are in no run"):
        report(compose_config("report", [f"dir={sweep}", "metrics=[nope]"], output_dir=tmp_path / "r"))
    with pytest.raises(ConfigError, match="x=seed is not an override"):
        report(compose_config("report", [f"dir={sweep}", "x=seed"], output_dir=tmp_path / "r"))


def test_guided_runs_are_marked(tmp_path):
    root = _multirun(tmp_path / "multirun", [
        (["baseline=gray"], {"psnr": 22.0, "psnr_joint": None, "uses_ground_truth_l": True}),
        (["baseline=bicubic"], {"psnr": 22.0, "psnr_joint": 20.5, "uses_ground_truth_l": False}),
    ])
    report(compose_config("report", [f"dir={root}"], output_dir=tmp_path / "r"))
    rows = [line for line in (root / "report.md").read_text().splitlines() if line.startswith("| 0") or line.startswith("| 1")]
    assert rows[0].startswith("| 0 (GT-L* guided) | gray |") and "GT-L*" not in rows[1]


def test_failed_and_unfinished_runs_are_named_not_dropped(sweep, tmp_path, capsys):
    (sweep / "6" / "error.txt").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory | try less\n")
    interrupted = json.loads((sweep / "5" / "metrics.json").read_text())
    (sweep / "5" / "metrics.json").write_text(json.dumps({**interrupted, "status": "interrupted"}))
    written = report(compose_config("report", [f"dir={sweep}", "x=model.net.width_mult"], output_dir=tmp_path / "r"))
    assert written["runs"] == 6 and written["unfinished"] == ["5"]
    assert written["left_out"] == [{"name": "6", "overrides": "model.net.width_mult=2.0 model.optimizer.lr=1e-4 debug=tiny",
                                    "reason": "RuntimeError: CUDA out of memory | try less"}]
    table = (sweep / "report.md").read_text()
    assert "## Left out: 1 run(s) without metrics" in table and "CUDA out of memory \\| try less" in table
    assert "Not finished (their last metrics are shown): `5` (interrupted)" in table
    assert "left out 1 run(s) without metrics" in capsys.readouterr().out
