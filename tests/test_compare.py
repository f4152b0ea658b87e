"""python -m joint_colsr.compare: equal-compute training, seeds, both protocols, paired differences."""

from __future__ import annotations

import json

import numpy as np
import pytest

from joint_colsr.compare import bootstrap_ci, compare, paired_differences, parse_args, training_flops_per_sample


def test_paired_differences_pair_photos_and_seeds():
    rows = lambda values, supers: {f"k{i}": {"psnr": v, "supercategories": supers[i]} for i, v in enumerate(values)}  # noqa: E731
    supers = [["person"], ["animal"], ["person"], []]
    ref = {0: rows([20.0, 21.0, 22.0, 23.0], supers), 1: rows([20.5, 21.5, 22.5, 23.5], supers)}
    model = {0: rows([21.0, 21.0, 23.0, 23.0], supers), 1: rows([21.5, 21.5, 23.5, 23.5], supers)}
    diff = paired_differences(model, ref, "psnr")
    assert diff["n"] == 4 and diff["mean"] == pytest.approx(0.5)
    assert diff["ci_low"] <= 0.5 <= diff["ci_high"]
    assert diff["by_supercategory"]["person"]["mean"] == pytest.approx(1.0)
    assert diff["by_supercategory"]["animal"]["mean"] == pytest.approx(0.0)
    tight = bootstrap_ci(np.full(50, 0.3))
    assert tight["ci_low"] == pytest.approx(0.3) and tight["ci_high"] == pytest.approx(0.3)


def test_training_flops_count_forward_and_backward():
    joint = training_flops_per_sample(["model=joint_paper", "debug=tiny"])
    cascade = training_flops_per_sample(["model=cascade", "debug=tiny"])
    assert 0 < joint < cascade  # the cascade's upscaler works at 384x384: far more compute per step


@pytest.mark.slow
def test_tiny_compare_writes_the_answer(tmp_path):
    out = tmp_path / "cmp"
    report = compare(parse_args(["--models", "joint_paper", "ic_only", "two_stage_upscale_first", "--seeds", "0", "1", "--budget-steps", "2",
                   "--train", "debug=tiny", "logger=none", "--eval", "data.val_views=1", "--out", str(out)]))
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["reference"] == "joint_paper" and set(saved["models"]) == {"joint_paper", "ic_only", "two_stage_upscale_first"}
    models = saved["models"]
    for name, entry in models.items():
        assert set(entry["metrics"]) >= {"psnr", "psnr_joint", "psnr_y"} and entry["metrics"]["psnr"]["n"] == 2
        assert not entry["uses_ground_truth_l"]
    for name in ("joint_paper", "ic_only"):  # equal compute, to whole steps
        assert 0.5 * report["budget_flops"] <= models[name]["train_flops"] <= 1.5 * report["budget_flops"]
    assert models["joint_paper"]["steps"] == [2, 2]
    assert models["two_stage_upscale_first"]["paired_vs_reference"]["psnr_joint"]["n"] == 2  # the 2 validation photos
    text = (out / "comparison.md").read_text()
    assert "| two_stage_upscale_first |" in text and "Paired per-image difference" in text
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
