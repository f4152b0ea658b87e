"""Runs written before a module moved (issue 21: run/ and ops/) still load, resume and evaluate.

``tests/data/legacy_layout_run`` was written by the previous layout: its checkpoint and
``.hydra/config.yaml`` name ``joint_colsr.callbacks.EMA``, ``joint_colsr.checkpointing...``.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_object, instantiate

from joint_colsr.run.checkpointing import read_checkpoint
from joint_colsr.run.moved import MOVED, upgrade_class_path

from .._cli import output_tail, run_train
from ..conftest import compose_config

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy_layout_run"


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def test_the_fixture_really_holds_old_class_paths():
    raw = torch.load(LEGACY / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    old = [s for s in _strings(raw["run_config"]) if s.startswith("joint_colsr.callbacks.")]
    assert "joint_colsr.callbacks.EMA" in old
    assert "joint_colsr.callbacks" in (LEGACY / ".hydra" / "config.yaml").read_text()


def test_the_checkpoint_reader_maps_moved_class_paths():
    state = read_checkpoint(LEGACY / "checkpoints" / "last.ckpt")
    paths = [s for s in _strings(state["run_config"]) if s.startswith("joint_colsr.")]
    assert "joint_colsr.run.callbacks.EMA" in paths
    assert not [p for p in paths if upgrade_class_path(p) != p], "an old path was left unmapped"
    for path in paths:
        if path.count(".") >= 2 and path.rsplit(".", 1)[-1][:1].isupper():
            get_object(path)  # every class path the run names imports


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_still_import_with_a_warning(old):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = __import__(old, fromlist=["_"])
    assert module.__name__ == MOVED[old]
    assert any(MOVED[old] in str(w.message) for w in caught)


def test_an_old_run_config_instantiates():
    config = yaml.safe_load((LEGACY / ".hydra" / "config.yaml").read_text())
    ema = config["callbacks"]["ema"]
    assert ema["_target_"] == "joint_colsr.callbacks.EMA"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        callback = instantiate(ema)
    assert type(callback).__module__ == "joint_colsr.run.callbacks"


@pytest.mark.slow
def test_an_old_run_resumes_and_evaluates(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LEGACY, run)
    before = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert before["epoch"] == 0
    proc = run_train(["debug=tiny", "seed=0", f"hydra.run.dir={run}", "trainer.max_epochs=2"], cwd=tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    log = (run / "train.log").read_text()
    assert "Restored all states" in proc.stdout + proc.stderr or "resuming" in log
    changed = re.findall(r"_target_: '(?!<unset>)[^']*' ->", log)  # a key the old run lacked is an addition, not a move
    assert not changed, f"a moved class path was reported as a changed config key: {changed}"
    after = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert after["epoch"] == 1 and after["global_step"] > before["global_step"]
    assert (run / "previous").is_dir() or "attempts" in (run / "metrics.json").read_text()

    from joint_colsr.eval import evaluate

    cfg = compose_config("eval", [f"ckpt_path={LEGACY / 'checkpoints' / 'last.ckpt'}"], output_dir=tmp_path / "eval")
    metrics = evaluate(cfg)
    assert metrics["num_images"] == 2 and metrics["model"].startswith("JointPaperNet")
