"""A command run in this process (``run/in_process.py``) is the command: same weights as its
subprocess, same files, one-line errors, and the process's state put back."""

from __future__ import annotations

import logging
import os
import sys

import pytest
import torch

from joint_colsr.run.in_process import CommandFailed, run_command
from joint_colsr.train import main as train_main

from .._cli import output_tail, run_train

TINY = ["debug=tiny", "logger=none", "seed=3"]


def _process_state() -> tuple:
    from hydra.core.singleton import Singleton
    from omegaconf.basecontainer import BaseContainer

    return (list(sys.argv), Singleton._instances, dict(Singleton._instances), dict(BaseContainer._resolvers),
            list(logging.getLogger().handlers), logging.getLogger().level, dict(os.environ))


def test_a_command_in_this_process_trains_the_same_weights_as_its_subprocess(tmp_path):
    before = _process_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess (OMP_NUM_THREADS=1): float sums in the same order
    try:
        run_command(train_main, [*TINY, f"hydra.run.dir={tmp_path / 'here'}"])
    finally:
        torch.set_num_threads(threads)
    assert _process_state() == before
    proc = run_train([*TINY, f"hydra.run.dir={tmp_path / 'there'}"], cwd=tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    here, there = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
                   for d in ("here", "there"))
    assert here["global_step"] == there["global_step"] > 0
    assert here["state_dict"].keys() == there["state_dict"].keys()
    for key, value in here["state_dict"].items():
        assert torch.equal(value, there["state_dict"][key]), key
    made = {d: sorted(p.relative_to(tmp_path / d).as_posix() for p in (tmp_path / d).rglob("*") if p.is_file())
            for d in ("here", "there")}
    assert made["here"] == made["there"] and {".hydra/config.yaml", "train.log", "metrics.json"} <= set(made["here"])
    assert (tmp_path / "here" / "train.log").stat().st_size > 0  # the command's own log file


def test_a_failing_command_prints_its_one_line_error_raises_and_puts_the_state_back(tmp_path, capsys):
    before = _process_state()
    with pytest.raises(CommandFailed, match="failed \\(exit 1\\); its error is above"):
        run_command(train_main, [*TINY, "model.net.no_such_key=1", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "no_such_key" in err and "Traceback" not in err
    assert _process_state() == before
