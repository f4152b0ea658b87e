"""End-to-end training on CPU with tiny widths: fast_dev_run, a real tiny run, resume."""

import json
import os
from pathlib import Path

import pytest
import torch

from joint_colsr.systems import ColSRSystem
from joint_colsr.train import train

TINY = ["debug=tiny", "callbacks.model_summary.max_depth=1"]


def test_fast_dev_run_samples(compose_cfg):
    cfg = compose_cfg(["debug=fdr", "model.net.width_mult=0.0625", "data.batch_size=2"])
    metrics = train(cfg)
    assert metrics["global_step"] == 1
    assert torch.isfinite(torch.tensor(metrics["val/psnr"]))
    # debug=fdr writes no checkpoint, image or logger file.
    written = sorted(p.relative_to(cfg.paths.output_dir).as_posix() for p in Path(cfg.paths.output_dir).rglob("*")
                     if p.is_file() and p.name != ".lock")  # .lock: the run directory's lock (joint_colsr.run.resume)
    assert written == ["metrics.json"], written


def test_fast_dev_run_folder(compose_cfg, image_folder):
    cfg = compose_cfg(["data=folder", f"data.root={image_folder}", "debug=fdr", "model.net.width_mult=0.0625", "data.batch_size=2"])
    metrics = train(cfg)
    assert metrics["global_step"] == 1


def test_tiny_run_writes_metrics_checkpoint_and_grid(compose_cfg):
    cfg = compose_cfg(TINY)
    metrics = train(cfg)
    out = cfg.paths.output_dir
    saved = json.loads(open(os.path.join(out, "metrics.json")).read())
    assert saved["global_step"] == metrics["global_step"] == 2
    assert saved["val/psnr_gray"] > 10 and "val/psnr" in saved
    ckpt = os.path.join(out, "checkpoints", "last.ckpt")
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == metrics["global_step"]
    assert saved["last_ckpt"] == ckpt and saved["best_ckpt"].endswith(".ckpt")
    system = ColSRSystem.load_from_checkpoint(ckpt, map_location="cpu")
    assert system.net.input_size == 96
    out_ab = system.eval()(torch.zeros(1, 1, 96, 96))
    assert out_ab.shape == (1, 2, 256, 256)
    # The latest grid and the best epoch's; every epoch's only with keep_all=true.
    assert sorted(os.listdir(os.path.join(out, "images"))) == ["val_best_epoch000.png", "val_latest.png"]
    assert os.path.exists(os.path.join(out, "csv", "metrics.csv"))
    # What a user needs and no copy: the last checkpoint and the best one.
    kept = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert len(kept) == 2 and kept[-1] == "last.ckpt" and kept[0].startswith("best-"), kept


def test_resume_continues_from_checkpoint(compose_cfg, tmp_path):
    first = compose_cfg(TINY)
    train(first)
    ckpt = os.path.join(first.paths.output_dir, "checkpoints", "last.ckpt")
    second = compose_cfg([*TINY, "trainer.max_epochs=2", f"ckpt_path={ckpt}"])
    metrics = train(second)
    assert metrics["global_step"] == 4 and metrics["epochs"] == 2
    # Still one best grid after the resume (the callback's best value travels in the checkpoint).
    images = sorted(os.listdir(os.path.join(second.paths.output_dir, "images")))
    assert len(images) == 2 and images[-1] == "val_latest.png" and images[0].startswith("val_best_epoch"), images


def test_keep_all_keeps_every_epochs_grid(compose_cfg):
    cfg = compose_cfg([*TINY, "trainer.max_epochs=2", "callbacks.validation_grid.keep_all=true"])
    train(cfg)
    images = sorted(os.listdir(os.path.join(cfg.paths.output_dir, "images")))
    assert {"val_epoch000.png", "val_epoch001.png", "val_latest.png"} <= set(images), images
    assert len([n for n in images if n.startswith("val_best_epoch")]) == 1, images


def test_seed_zero_is_a_real_seed(compose_cfg):
    # Same run directory twice: auto_resume=false starts the second run afresh.
    a = train(compose_cfg([*TINY, "seed=0", "trainer.deterministic=true", "auto_resume=false"]))
    b = train(compose_cfg([*TINY, "seed=0", "trainer.deterministic=true", "auto_resume=false"]))
    assert a["train/loss"] == pytest.approx(b["train/loss"], abs=0, rel=0)


def test_rerunning_a_finished_run_directory_resumes_instead_of_restarting(compose_cfg):
    first = train(compose_cfg(TINY))
    run_dir = Path(compose_cfg(TINY).paths.output_dir)
    before = (run_dir / "checkpoints" / "last.ckpt").read_bytes(), (run_dir / "metrics.json").read_text()
    again = train(compose_cfg(TINY))  # same directory: finds checkpoints/last.ckpt finished, trains nothing
    assert again["global_step"] == first["global_step"] == 2
    assert ((run_dir / "checkpoints" / "last.ckpt").read_bytes(), (run_dir / "metrics.json").read_text()) == before
