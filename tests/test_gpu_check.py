"""``make gpu-check``: what can be checked without a GPU (the GPU numbers come from a GPU node)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from joint_colsr.bench.gpu_check import NO_GPU_EXIT, determinism, small_run, write_synthetic_cache

from .conftest import REPO, hang_bound


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_fails():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "joint_colsr.bench", "--gpu-check"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=hang_bound(120))
    assert proc.returncode == NO_GPU_EXIT
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU"), lines


def test_synthetic_cache_is_a_cache_the_data_module_trains_from(tmp_path):
    from joint_colsr.data import ColSRDataModule
    from joint_colsr.data.cache import ImageCache

    root = write_synthetic_cache(tmp_path / "cache", train_images=10, val_images=3, size=32, shard_size=16)
    cache = ImageCache.open(root, verify="full")
    assert (len(cache.splits["train"]), len(cache.splits["val"])) == (10, 3)
    dm = ColSRDataModule(source=None, root=None, cache=str(root), batch_size=4, num_workers=0, input_size=8, output_size=32)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    rgb = batch["rgb"]
    assert rgb.shape == (4, 3, 32, 32) and rgb.dtype == torch.uint8
    assert len({tuple(img.flatten()[:64].tolist()) for img in rgb}) == 4  # no two images alike
    assert 20 < rgb.float().std() < 120  # not flat, not noise alone


@pytest.mark.slow
def test_small_runs_report_the_average_device_and_seeded_runs_are_equal():
    run = small_run(["debug=tiny"])
    assert run["devices"] == {"ema": "cpu", "module": "cpu"}
    assert "val/psnr" in run["metrics"] and run["global_step"] == 2
    result = determinism(["debug=tiny"])
    assert result["equal"] and result["max_abs_weight_diff"] == 0.0
    from joint_colsr.bench.gpu_check import _without_weights, render_markdown

    env = {"device": "CPU stand-in", "memory_gib": 0, "multiprocessors": 0, "torch": torch.__version__, "cuda": None,
           "cudnn": None, "cpu_cores": 2}
    report = render_markdown({"date": "now", "environment": env, "seconds": 1.0, "smoke": _without_weights(run),
                              "determinism": result})
    assert "EMA average on cpu, model on cpu" in report and "give equal weights" in report


@pytest.mark.slow
def test_paper_recipe_run_and_step_work_run_on_cpu_too(tmp_path):
    # The GPU numbers come from a GPU node; here the code path: the paper recipe from a
    # synthetic cache, blocks of steps timed, the FLOPs and bytes of a step counted.
    from joint_colsr.bench.gpu_check import paper_recipe_run, step_work_per_image
    from joint_colsr.bench.models import compose_train_config

    tiny = ["model.net.width_mult=0.0625", "trainer.accelerator=cpu", "data.num_workers=0", "data.input_size=24",
            "data.output_size=64"]
    cache = write_synthetic_cache(tmp_path / "cache", train_images=12, val_images=2, size=64)
    run = paper_recipe_run(cache, batch_size=2, fast=False, warmup=1, steps=4, block=2, extra=tiny)
    assert len(run["block_images_per_s"]) == 2 and run["images_per_s"] > 0
    assert run["syncs_per_step"] is None and run["sync_checked_steps"] == 0  # CUDA's sync debug mode: GPUs only
    work = step_work_per_image(compose_train_config(["experiment=paper", "data.root=unused", *tiny]), batch_size=2, device="cpu")
    assert work["flops"] > 1e6 and work["bytes"] > 64 * 64 * 2 * 4
    # The report renders from what the runs return (device facts given here: no GPU).
    from joint_colsr.bench.gpu_check import render_markdown

    env = {"device": "CPU stand-in", "memory_gib": 0, "multiprocessors": 0, "torch": torch.__version__, "cuda": None,
           "cudnn": None, "cpu_cores": 2}
    ceilings = {"bf16_matmul_tflops": 1.0, "copy_gb_per_s": 10.0}
    report = render_markdown({
        "date": "now", "environment": env, "seconds": 1.0, "ceilings": ceilings, "work_per_image": work,
        "roofs": {"flops_images_per_s": 1e12 / work["flops"], "memory_images_per_s": 1e10 / work["bytes"]},
        "cache_images": 12, "paper_recipe": [run, {"batch_size": 256, "channels_last_compile": True, "skipped": "skipped: budget"}],
        "smoke": {"skipped": "skipped: budget"},
    })
    assert f"| 2 | False | {run['images_per_s']:,.0f} |" in report and "skipped: budget" in report


def test_the_memory_roof_counts_only_ops_that_move_bytes():
    import torch

    from joint_colsr.bench.gpu_check import moves_bytes

    aten = torch.ops.aten
    for view in (aten.view.default, aten._unsafe_view.default, aten.t.default, aten.expand.default, aten.slice.Tensor,
                 aten.transpose.int, aten.permute.default, aten.detach.default):
        assert not moves_bytes(view), view
    for op in (aten.add.Tensor, aten.add_.Tensor, aten.mm.default, aten.copy_.default, aten.convolution.default):
        assert moves_bytes(op), op


def test_the_synthetic_cache_is_checked_against_the_free_space_of_its_work_dir(tmp_path):
    import shutil

    from joint_colsr.bench.gpu_check import check_free_space, synthetic_cache_bytes

    assert synthetic_cache_bytes(256 * 140, 256) > 7e9  # the default: about 7 GB
    work = tmp_path / "work"
    check_free_space(work, 1)
    assert work.is_dir()
    free = shutil.disk_usage(work).free
    with pytest.raises(SystemExit, match=r"needs .* GB in .*work, which has .* GB free: pass --work-dir DIR"):
        check_free_space(work, free * 2)


def test_the_random_crop_run_trains_from_a_larger_cache_and_is_reported(tmp_path):
    import argparse

    from joint_colsr.bench.gpu_check import CROP_OVERRIDES, paper_recipe_run, random_crop_run, render_markdown

    tiny = ["model.net.width_mult=0.0625", "trainer.accelerator=cpu", "data.num_workers=0", "data.input_size=24",
            "data.output_size=64"]
    cache = write_synthetic_cache(tmp_path / "cache", train_images=12, val_images=2, size=64, train_size=80)  # crops of 80 -> 64
    run = paper_recipe_run(cache, batch_size=2, fast=False, warmup=1, steps=4, block=2, extra=[*tiny, *CROP_OVERRIDES])
    assert run["images_per_s"] > 0
    env = {"device": "CPU stand-in", "memory_gib": 0, "multiprocessors": 0, "torch": torch.__version__, "cuda": None,
           "cudnn": None, "cpu_cores": 2}
    report = render_markdown({"date": "now", "environment": env, "seconds": 1.0,
                              "paper_recipe_random_crops": {**run, "cache_side": 80, "cache_images": 12}})
    assert f"from a synthetic 80-pixel cache, batch 2, eager: {run['images_per_s']:,.0f} img/s" in report
    args = argparse.Namespace(work_dir=tmp_path / "work", warmup=1, steps=1, block=1)
    assert random_crop_run(args, seconds_left=10)["skipped"].startswith("skipped: 10 s")


@pytest.mark.slow
def test_the_ddp_run_launches_the_training_command_and_every_rank_reports(tmp_path):
    # On a node with 2 or more GPUs gpu-check runs the paper recipe under DDP; here the same code
    # path on 2 CPU ranks (gloo): the command as users run it, a timing file per rank, the report.
    from joint_colsr.bench.gpu_check import ddp_run, render_markdown

    tiny = ["model.net.width_mult=0.0625", "trainer.accelerator=cpu", "data.num_workers=0", "data.input_size=24",
            "data.output_size=64"]
    cache = write_synthetic_cache(tmp_path / "cache", train_images=24, val_images=2, size=64)
    run = ddp_run(cache, devices=2, warmup=1, steps=4, block=2, batch_size=2, extra=tiny, timeout_s=hang_bound(600))
    assert "error" not in run, run
    assert run["devices"] == 2 and len(run["rank_images_per_s"]) == 2 and run["images_per_s"] == sum(run["rank_images_per_s"]) > 0
    assert run["syncs_per_step"] == [None, None]  # CUDA's sync debug mode: GPUs only
    env = {"device": "CPU stand-in", "memory_gib": 0, "multiprocessors": 0, "torch": torch.__version__, "cuda": None,
           "cudnn": None, "cpu_cores": 2}
    report = render_markdown({"date": "now", "environment": env, "seconds": 1.0, "paper_recipe_ddp": run, "cache_images": 24,
                              "paper_recipe": [{"batch_size": 2, "channels_last_compile": False, "images_per_s": 10.0,
                                                "peak_memory_gib": None, "syncs_per_step": None, "sync_checked_steps": 0}]})
    assert f"over 2 GPUs, batch 2 per GPU, eager: {run['images_per_s']:,.0f} img/s for the node" in report
    assert "x one GPU's 10 img/s" in report and "per rank: n/a, n/a" in report
    failed = ddp_run(cache, devices=2, warmup=1, steps=4, block=2, batch_size=2, extra=[*tiny, "model.net.nonsense=1"],
                     timeout_s=hang_bound(600))
    assert failed["error"].startswith("failed (exit 1)")
