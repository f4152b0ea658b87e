"""python -m joint_colsr.compare: equal-compute training, seeds, both protocols, paired differences."""

from __future__ import annotations

import json

import numpy as np
import pytest

from joint_colsr.compare import (bootstrap_ci, compare, held_out_split, paired_differences, paired_interval, parse_args,
                                 check_test_set, training_flops_per_sample, verdict)


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


def _seeds(offsets: list[float], photos: int, rng: np.random.Generator, spread: float) -> dict[int, dict]:
    return {seed: {f"k{i}": {"psnr": 20.0 + off + spread * rng.standard_normal(), "supercategories": []} for i in range(photos)}
            for seed, off in enumerate(offsets)}


def test_paired_interval_carries_seed_variance_and_the_verdict_says_so():
    rng = np.random.default_rng(0)
    ref = _seeds([0.0, 0.0, 0.0], 40, rng, 0.0)
    # photos agree within a seed (tiny photo noise) but seeds disagree: +0.6, -0.5, +0.2
    model = {s: {k: {**r, "psnr": ref[s][k]["psnr"] + off + 0.01 * rng.standard_normal()} for k, r in rows.items()}
             for (s, rows), off in zip(ref.items(), [0.6, -0.5, 0.2])}
    d = paired_interval(model, ref, "psnr")
    assert d["seeds"] == 3 and d["photos"] == 40 and d["mean"] == pytest.approx(0.1, abs=0.01)
    assert d["lo"] <= d["seed_t"][0] and d["hi"] >= d["seed_t"][1]  # never narrower than the seed-level t-interval
    assert d["lo"] < 0 < d["hi"]
    assert verdict("m", "ref", d)["text"].startswith("no detectable difference (interval spans 0")
    # a consistent gain over seeds and photos is detected, and named for the model
    better = {s: {k: {**r, "psnr": r["psnr"] + 0.5 + 0.05 * rng.standard_normal()} for k, r in rows.items()} for s, rows in ref.items()}
    v = verdict("m", "ref", paired_interval(better, ref, "psnr"))
    assert v["text"].startswith("m better by 0.4") and 0 < v["detectable"] < 0.1
    worse = {s: {k: {**r, "psnr": r["psnr"] - 0.5} for k, r in rows.items()} for s, rows in ref.items()}
    assert verdict("m", "ref", paired_interval(worse, ref, "psnr"))["text"].startswith("ref better by 0.500")
    two = {s: better[s] for s in (0, 1)}
    assert verdict("m", "ref", paired_interval(two, {s: ref[s] for s in (0, 1)}, "psnr"))["text"].startswith("too few seeds (2 < 3)")


def test_the_test_set_is_checked_against_what_training_reads():
    train, evaluation = held_out_split(["debug=tiny"], ["coffee", "motorcycle_left"])
    assert "motorcycle_right" not in train[-1]  # a held-out photo's whole scene (the stereo pair) leaves training
    held_out = check_test_set(train, evaluation)
    assert held_out["disjoint_from_training_and_validation"] and held_out["photos"] == 2
    overlapping = check_test_set(["debug=tiny"], ["data.val_views=1"])  # eval's default: training's validation photos
    assert not overlapping["disjoint_from_training_and_validation"] and overlapping["overlap"] == ["chelsea", "china"]


def test_training_flops_count_forward_and_backward():
    joint = training_flops_per_sample(["model=joint_paper", "debug=tiny"])
    cascade = training_flops_per_sample(["model=cascade", "debug=tiny"])
    assert 0 < joint < cascade  # the cascade's upscaler works at 384x384: far more compute per step


@pytest.mark.slow
def test_tiny_compare_writes_the_answer_and_reuses_finished_runs(tmp_path):
    out = tmp_path / "cmp"
    argv = ["--models", "joint_paper", "ic_only", "two_stage_upscale_first", "--seeds", "0", "1", "--budget-steps", "2",
            "--train", "debug=tiny", "logger=none", "--eval", "data.val_views=1", "--out", str(out)]
    report = compare(parse_args(argv))
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["reference"] == "joint_paper" and set(saved["contenders"]) == {"joint_paper", "ic_only", "two_stage_upscale_first"}
    models = saved["contenders"]
    for name, entry in models.items():
        assert set(entry["metrics"]) >= {"psnr", "psnr_joint", "psnr_y"} and entry["metrics"]["psnr"]["n"] == 2
        assert not entry["uses_ground_truth_l"]
        assert set(entry["per_seed"]) == {"0", "1"} and entry["per_seed"]["0"]["psnr_joint"] is not None
        assert entry["vs_bicubic"]["text"]
    for name in ("joint_paper", "ic_only"):  # equal compute, to whole steps
        assert 0.5 * report["budget_flops"] <= models[name]["train_flops"] <= 1.5 * report["budget_flops"]
    assert models["joint_paper"]["steps"] == [2, 2]
    assert models["two_stage_upscale_first"]["paired_vs_reference"]["psnr_joint"]["n"] == 2  # the 2 held-out photos
    assert saved["test_set"] == {"name": "samples: coffee, flower", "photos": 2, "disjoint_from_training_and_validation": True,
                                 "overlap": []}
    paired = models["two_stage_upscale_first"]["paired"]["psnr_joint"]
    assert paired["seeds"] == 2 and paired["lo"] <= paired["mean"] <= paired["hi"]
    assert models["two_stage_upscale_first"]["verdict"]["psnr_joint"]["text"].startswith("too few seeds (2 < 3)")
    assert set(saved["baselines"]) == {"gray", "bicubic"} and saved["baselines"]["bicubic"]["metrics"]["psnr_joint"] > 0
    text = (out / "comparison.md").read_text()
    assert text.splitlines()[2] == "## Verdict" and "smallest detectable difference" in text
    assert "| two_stage_upscale_first |" in text and "| baseline bicubic (no training) |" in text and "x budget" in text
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    again = compare(parse_args(argv))  # same config, same code: nothing is trained again
    assert again["reused_runs"] == 6 and again["contenders"]["ic_only"]["per_seed"] == models["ic_only"]["per_seed"]
