"""History is append-only and a resume checks its config: reruns, start-overs, changed keys,
damaged or foreign checkpoints, and one process per run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from joint_colsr.run.config_checks import ConfigError
from joint_colsr.run.resume import check_resume_config, find_resume_checkpoint
from joint_colsr.train import train

from ..conftest import folder_locked_elsewhere
from .test_reliability import EXACT

ONE = [*EXACT, "data.num_workers=0", "trainer.max_epochs=1", "logger=csv"]


@pytest.fixture
def finished_run(compose_cfg):
    cfg = compose_cfg(ONE)
    train(cfg)
    return Path(cfg.paths.output_dir)


def test_rerun_of_a_finished_run_says_so_and_changes_nothing(compose_cfg, finished_run, capsys):
    files = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    metrics = train(compose_cfg(ONE))
    assert "already finished" in capsys.readouterr().out
    assert metrics["global_step"] == 4
    after = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    assert after == files


def test_longer_rerun_continues_and_keeps_the_earlier_records(compose_cfg, finished_run):
    metrics = train(compose_cfg([*ONE, "trainer.max_epochs=2"]))  # a key that may change: applied
    assert metrics["global_step"] == 8
    saved = json.loads((finished_run / "metrics.json").read_text())
    assert saved["global_step"] == 8 and [a["global_step"] for a in saved["attempts"]] == [4]
    kept = list((finished_run / "csv").glob("metrics.*.csv"))
    assert len(kept) == 1 and len(kept[0].read_text().splitlines()) > 1  # the first attempt's rows
    assert (finished_run / "csv" / "metrics.csv").is_file()


def test_a_key_that_cannot_change_fails_naming_both_values(compose_cfg, finished_run):
    with pytest.raises(ConfigError) as info:
        train(compose_cfg([*ONE, "trainer.max_epochs=2", "model.optimizer.lr=0.5"]))
    message = str(info.value)
    assert "model.optimizer.lr=0.5" in message and "model.optimizer.lr=0.0001" in message.replace("1e-04", "0.0001")
    assert "auto_resume=false" in message
    with pytest.raises(ConfigError, match="seed"):
        train(compose_cfg([*ONE, "trainer.max_epochs=2", "seed=8"]))


def test_a_key_added_after_the_run_counts_only_when_it_differs_from_its_default():
    saved = {"model": {"_target_": "joint_colsr.nets.JointPaperNet", "input_size": 96}}
    current = {"model": {**saved["model"], "negative_slope": 0.2}}  # added later, at the constructor default
    assert check_resume_config(saved, current, "last.ckpt") == []
    current["model"]["negative_slope"] = 0.3
    with pytest.raises(ConfigError, match=r"model.negative_slope=0.3.*model.negative_slope='<unset>'"):
        check_resume_config(saved, current, "last.ckpt")
    current["model"] = {**saved["model"], "no_such_argument": 1}  # not a constructor argument: a change
    with pytest.raises(ConfigError, match="no_such_argument"):
        check_resume_config(saved, current, "last.ckpt")


def test_starting_over_moves_the_earlier_attempt_aside(compose_cfg, finished_run):
    before = (finished_run / "checkpoints" / "last.ckpt").read_bytes()
    train(compose_cfg([*ONE, "auto_resume=false", "model.optimizer.lr=0.5"]))
    previous = list((finished_run / "previous").iterdir())
    assert len(previous) == 1
    assert (previous[0] / "checkpoints" / "last.ckpt").read_bytes() == before
    assert (previous[0] / "metrics.json").is_file()


def test_a_damaged_last_ckpt_falls_back_to_an_intact_one(finished_run):
    ckpts = finished_run / "checkpoints"
    shutil.copy(ckpts / "last.ckpt", ckpts / "last-v1.ckpt")
    (ckpts / "last.ckpt").write_bytes(b"truncated")
    assert find_resume_checkpoint(finished_run) == ckpts / "last-v1.ckpt"


def test_a_damaged_last_ckpt_resumes_from_the_best_checkpoint_and_is_kept(compose_cfg, finished_run, caplog):
    ckpts = finished_run / "checkpoints"
    (ckpts / "last.ckpt").write_bytes(b"")  # zero bytes: a write the disk cut short
    best = next(ckpts.glob("best-*.ckpt"))
    step = torch.load(best, weights_only=False, map_location="cpu")["global_step"]
    metrics = train(compose_cfg([*ONE, "trainer.max_epochs=2"]))
    assert metrics["global_step"] == 2 * step  # one more epoch from the best checkpoint, not from epoch 0
    assert not (finished_run / "previous").exists()
    assert [p.read_bytes() for p in ckpts.glob("last.ckpt.damaged-*")] == [b""]  # set aside, not lost
    assert f"resuming from {best.name} (global step {step}), the furthest intact checkpoint" in caplog.text


def test_resuming_with_another_model_names_the_models(compose_cfg, finished_run):
    with pytest.raises(ConfigError, match="with another model: the run trained model.net._target_='joint_colsr.nets.JointPaperNet'"):
        train(compose_cfg([*ONE, "trainer.max_epochs=2", "model=residual_joint"]))


def test_the_furthest_checkpoint_wins(compose_cfg, finished_run):
    ckpts = finished_run / "checkpoints"
    state = torch.load(ckpts / "last.ckpt", weights_only=False)
    state["global_step"] = 2
    torch.save(state, ckpts / "last-v1.ckpt")
    assert find_resume_checkpoint(finished_run) == ckpts / "last.ckpt"


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"\x80\x04K\x01."])  # text; a pickle of the int 1
def test_a_foreign_ckpt_path_is_one_sentence(compose_cfg, tmp_path, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match="bad.ckpt"):
        train(compose_cfg([*ONE, f"ckpt_path={bad}"]))


def test_a_second_process_in_the_same_run_dir_is_refused(compose_cfg):
    import subprocess
    import sys
    import time

    cfg = compose_cfg(ONE)
    run_dir = Path(cfg.paths.output_dir)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from joint_colsr.run.resume import lock_run_dir\n"
                               f"with lock_run_dir(Path({str(run_dir)!r})):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="in use by another process"):
            train(cfg)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    train(cfg)  # free again once the holder is gone (even killed)


@pytest.mark.parametrize("override, names", [
    ("model.optimizer.lr=abc", "model.optimizer.lr"),
    ("data.crop_scale=[0.9,0.2]", "data.crop_scale"),
    ("data.train_samples_per_epoch=-8", "data.train_samples_per_epoch"),
    ("+callbacks.ema.decya=0.5", "callbacks.ema.decya"),
])
def test_bad_values_fail_at_start_up_naming_the_key(compose_cfg, override, names):
    cfg = compose_cfg([*ONE, override])
    with pytest.raises((ConfigError, ValueError)) as info:
        train(cfg)
    assert names in str(info.value)
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))


def test_orphaned_checkpoint_temporaries_are_removed_and_a_read_only_dir_fails_at_start_up(compose_cfg):
    import os

    cfg = compose_cfg(ONE)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    ckpts.mkdir(parents=True)
    orphan = ckpts / ".last.ckpt.abc123.tmp"
    orphan.write_bytes(b"half")
    train(cfg)
    assert not orphan.exists()
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    cfg = compose_cfg([*ONE, "auto_resume=false"])
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    shutil.rmtree(Path(cfg.paths.output_dir))
    ckpts.mkdir(parents=True)
    ckpts.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write checkpoints"):
            train(cfg)
    finally:
        ckpts.chmod(0o700)


def test_folder_source_reads_symlinked_subfolders_and_describes_its_files(image_folder, tmp_path):
    from joint_colsr.data.sources import ImageFolder

    plain = ImageFolder(str(image_folder))
    linked = tmp_path / "linked"
    linked.mkdir()
    for child in image_folder.iterdir():
        (linked / child.name).symlink_to(child.resolve(), target_is_directory=child.is_dir())
    assert len(ImageFolder(str(linked)).items()) == len(plain.items())
    # Another folder (one photo fewer) is described differently: its cache would be refused.
    other = tmp_path / "other"
    shutil.copytree(image_folder, other)
    next(p for p in other.rglob("*") if p.is_file()).unlink()
    assert ImageFolder(str(other)).describe() != plain.describe()
    assert ImageFolder(str(linked)).describe() == plain.describe()


def test_a_second_preprocess_into_one_cache_is_refused(image_folder, tmp_path):
    from joint_colsr.data.cache import build_cache
    from joint_colsr.data.sources import ImageFolder

    cache = tmp_path / "cache"
    with folder_locked_elsewhere(cache, "busy (pid {pid})"):
        with pytest.raises(ConfigError, match="being built by another process"):
            build_cache(ImageFolder(str(image_folder)), cache, output_size=32, progress=False)
    build_cache(ImageFolder(str(image_folder)), cache, output_size=32, progress=False)  # free again
    assert (cache / "index.json").is_file()


def test_a_failed_checkpoint_write_is_one_sentence_and_keeps_the_old_file(tmp_path, monkeypatch):
    from joint_colsr.run.checkpointing import AtomicCheckpointIO, CheckpointWriteError

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)

    def disk_full(obj, f, *args, **kwargs):  # what torch raises when the disk fills mid-write
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match="could not write checkpoint .*free disk space"):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_killed_worker_noticed_during_a_checkpoint_write_is_not_called_a_write_failure(tmp_path, monkeypatch):
    from joint_colsr.run.checkpointing import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)

    def worker_died(obj, f, *args, **kwargs):  # torch's SIGCHLD handler raises wherever the main process is
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")

    monkeypatch.setattr(torch, "save", worker_died)
    with pytest.raises(RuntimeError, match=r"^DataLoader worker \(pid 4242\)"):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["global_step"] == 1
