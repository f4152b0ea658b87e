"""logger=wandb offline, no account: files inside the run directory, one wandb run per multirun job.

wandb keeps an offline run's config, summary and history only in its transaction log
(``run-<id>.wandb``: a LevelDB-style record log of ``wandb_internal_pb2.Record``
protobufs); :func:`wandb_records` reads it so the tests can check what ``wandb sync``
would upload.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

from joint_colsr.train import train

from ._cli import output_tail, run_train

_BLOCK = 32768  # LevelDB log block; records never straddle a 7-byte header across blocks


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, pending, raw = 7, b"", []
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # block trailer padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            raw.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            raw.append(pending + chunk)
    records = []
    for blob in raw:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(blob)
        records.append(record)
    return records


def offline_run(run_dir: Path) -> dict:
    """The single offline wandb run under ``run_dir/wandb``: name, group, config keys, summary, exit code."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run in {run_dir}/wandb, found {runs}"
    (log_file,) = runs[0].glob("run-*.wandb")
    out: dict = {"dir": runs[0], "config": set(), "summary": {}, "artifacts": [], "exit_code": None}
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(id=record.run.run_id, name=record.run.display_name, group=record.run.run_group)
        elif kind == "config":
            out["config"] |= {item.key for item in record.config.update}
        elif kind == "summary":
            out["summary"].update({item.key: json.loads(item.value_json) for item in record.summary.update if item.key})
        elif kind == "artifact":
            out["artifacts"].append((record.artifact.type, [m.path for m in record.artifact.manifest.contents]))
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def test_wandb_offline_run_lives_in_the_run_dir(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(["debug=tiny", "logger=wandb", "logger.wandb.log_model=true"])
    metrics = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run = offline_run(run_dir)
    assert not (tmp_path / "wandb").exists(), "wandb wrote into the current directory"
    assert {"model", "data", "trainer", "seed", "model/params"} <= run["config"]  # the resolved config + parameter count
    assert run["summary"]["val/psnr"] == pytest.approx(metrics["val/psnr"])
    assert run["summary"]["params"] == metrics["params"] and run["summary"]["fit_seconds"] == metrics["fit_seconds"]
    grids = list((run["dir"] / "files" / "media" / "images" / "val").glob("examples_*.png"))
    assert grids, "the validation image grid was not logged as a wandb.Image"
    assert ("model", ["model.ckpt"]) in run["artifacts"]  # checkpoint as an artifact (log_model=true)
    assert run["exit_code"] == 0  # train() finished the run


def test_every_multirun_job_is_its_own_named_grouped_wandb_run(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_train(["-m", "debug=tiny", "logger=wandb",
                      "seed=3,4", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode == 0, output_tail(proc)
    assert not (tmp_path / "wandb").exists()
    runs = [offline_run(sweep_dir / str(num)) for num in (0, 1)]
    assert runs[0]["id"] != runs[1]["id"]
    for num, run in enumerate(runs):
        assert run["name"].startswith(f"{num}:") and f"seed={3 + num}" in run["name"]
        assert run["exit_code"] == 0 and "val/psnr" in run["summary"]
    assert runs[0]["group"] == runs[1]["group"] == f"train/{sweep_dir.name}"
