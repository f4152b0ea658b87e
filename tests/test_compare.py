"""python -m joint_colsr.compare: equal-compute training, seeds, both protocols, paired differences."""

from __future__ import annotations

import json
import os

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
    # 35 steps: the smallest budget these three fit within 2 % (compare names it); 40 samples an epoch: few validations
    common = ["--models", "joint_paper", "ic_only", "two_stage_upscale_first", "--budget-steps", "35",
              "--train", "debug=tiny", "logger=none", "data.train_samples_per_epoch=40", "trainer.limit_train_batches=null",
              "--eval", "data.val_views=1", "--out", str(out)]
    first = compare(parse_args([*common, "--seeds", "0", "--jobs", "1"]))  # one after another, in this process
    assert first["reused_runs"] == 0 and (out / "two_stage_upscale_first" / "seed0.log").is_file()
    argv = [*common, "--seeds", "0", "1", "--jobs", "2"]  # seed 1's runs as 2 subprocesses at once
    report = compare(parse_args(argv))
    assert report["reused_runs"] == 3
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["reference"] == "joint_paper" and set(saved["contenders"]) == {"joint_paper", "ic_only", "two_stage_upscale_first"}
    models = saved["contenders"]
    for name, entry in models.items():
        assert set(entry["metrics"]) >= {"psnr", "psnr_joint", "psnr_y"} and entry["metrics"]["psnr"]["n"] == 2
        assert not entry["uses_ground_truth_l"]
        assert set(entry["per_seed"]) == {"0", "1"} and entry["per_seed"]["0"]["psnr_joint"] is not None
        assert entry["vs_bicubic"]["text"]
    for name, entry in models.items():  # equal compute within 2 %, the last batch cut short
        assert abs(entry["train_flops"] / report["budget_flops"] - 1) <= 0.02, name
        assert entry["budget_flops"] == report["budget_flops"] and entry["params"] > 0 and entry["inference_flops"] > 0
    assert models["joint_paper"]["samples"] == {"model": 35 * 4} and models["joint_paper"]["steps"] == [[35], [35]]
    ic = models["ic_only"]["samples"]["model"]
    assert models["ic_only"]["steps"] == [[-(-ic // 4)]] * 2  # ceil: a last batch cut short is still a step
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
    assert "params (M)" in text and "inference GFLOP/image" in text
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "paired.png").read_bytes()[:4] == b"\x89PNG"
    again = compare(parse_args(argv))  # same config, same code: nothing is trained again
    assert again["reused_runs"] == 6 and again["contenders"]["ic_only"]["per_seed"] == models["ic_only"]["per_seed"]


def test_the_budget_is_spent_within_2_percent_or_compare_names_the_smallest_that_is():
    from joint_colsr.compare import BUDGET_TOLERANCE, CONTENDERS, plan_budget

    with pytest.raises(SystemExit, match=r"--budget-steps 2 .* too small .* residual_joint costs .* the smallest budget "
                                         r"that fits every contender is --budget-steps (\d+)") as stop:
        plan_budget(list(CONTENDERS), "joint_paper", ["debug=tiny"], 2, "train_flops")
    fits = int(str(stop.value).rsplit(" ", 1)[1])
    plan = plan_budget(list(CONTENDERS), "joint_paper", ["debug=tiny"], fits, "train_flops")
    assert plan["contenders"]["joint_paper"]["stages"]["model"]["samples"] == fits * plan["batch_size"]
    for name, entry in plan["contenders"].items():
        assert abs(entry["train_flops"] / plan["budget_flops"] - 1) <= BUDGET_TOLERANCE, name
        for stage in entry["stages"].values():  # each stage spends its own share, a whole number of samples
            assert abs(stage["samples"] * stage["train_flops_per_sample"] / (plan["budget_flops"] * stage["share"]) - 1) <= BUDGET_TOLERANCE
    assert set(plan["contenders"]["two_stage_upscale_first"]["stages"]) == {"colorizer", "upscaler"}
    with pytest.raises(SystemExit, match="too small"):
        plan_budget(list(CONTENDERS), "joint_paper", ["debug=tiny"], fits - 1 if fits > 2 else 1, "train_flops")


@pytest.mark.parametrize("match", ["params", "inference_flops"])
def test_match_solves_each_contenders_width_to_the_references_quantity(match):
    from joint_colsr.compare import MATCH_TOLERANCE, plan_budget

    models = ["joint_paper", "residual_joint", "two_stage_colorize_first"]
    plan = plan_budget(models, "joint_paper", [], 60, match)
    reference = plan["contenders"]["joint_paper"]
    assert reference["width_mult"] is None
    for name in models[1:]:
        entry = plan["contenders"][name]
        assert abs(entry[match] / reference[match] - 1) <= MATCH_TOLERANCE, (name, entry[match], reference[match])
        assert f"model.net.width_mult={entry['width_mult']:g}" in entry["train"]
    unmatched = plan_budget(models, "joint_paper", [], 60, "train_flops")["contenders"]
    assert unmatched["residual_joint"]["width_mult"] is None
    assert abs(unmatched["residual_joint"][match] / reference[match] - 1) > MATCH_TOLERANCE  # so matching changed something


def test_on_coco_the_default_test_set_is_val2017_checked_disjoint_from_training(tmp_path):
    from joint_colsr.compare import default_test_set

    from .test_coco import make_tiny_coco

    root = make_tiny_coco(tmp_path / "coco")
    train = ["data=coco", f"data.root={root}", "data.source.val_images=2", "data.categories=[person]"]
    train_out, evaluation = default_test_set(["model=joint_paper"], train, ["data.val_views=1"], ["coffee"])
    assert train_out == train and evaluation[:3] == ["data=coco", f"data.root={root}", 'data.categories=["person"]']
    checked = check_test_set(train_out, evaluation)
    assert checked["disjoint_from_training_and_validation"] and checked["overlap"] == []
    assert checked["photos"] == 1  # val2017's one colour photo with a person (the gray one is excluded)
    # training that validates on val2017 itself: the check sees it
    leaky = check_test_set([*train, "data.source.validation=val2017"], evaluation)
    assert not leaky["disjoint_from_training_and_validation"]


def test_parallel_jobs_take_the_visible_cuda_devices_in_turn_and_share_the_cores(monkeypatch):
    from joint_colsr.compare import _device_of, job_env, resolve_jobs

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert [_device_of(slot) for slot in range(3)] == ["2", "5", "2"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert job_env(1, 2) == {"CUDA_VISIBLE_DEVICES": "5", "OMP_NUM_THREADS": str(max(1, cores // 2))}
    assert job_env(0, 4 * cores)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stays
    assert "OMP_NUM_THREADS" not in job_env(0, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _device_of(0) is None
    assert resolve_jobs("3") == 3
    with pytest.raises(SystemExit, match="--jobs must be a positive count or auto"):
        resolve_jobs("0")


def test_srgan_is_an_optional_contender_whose_discriminator_counts_in_its_training_compute():
    from joint_colsr.compare import DEFAULT_MODELS, _pass_flops, net_costs, parse_args

    assert "srgan" not in DEFAULT_MODELS and parse_args(["--models", "joint_paper", "srgan"]).models == ["joint_paper", "srgan"]
    generator = net_costs(["model=residual_joint", "debug=tiny"])
    gan = net_costs(["model=srgan", "debug=tiny"])
    assert gan["params"] == generator["params"] and gan["inference_flops"] == generator["inference_flops"]

    import torch

    from joint_colsr.nets import VGGDiscriminator

    d = VGGDiscriminator(in_channels=3, width_mult=1.0, pool_size=4).to("meta")  # debug=tiny leaves D as configured
    d_pass = _pass_flops(d, torch.zeros(1, 3, 256, 256, device="meta", requires_grad=True), backward=True)
    # D's own step on real and fake, and the generator's adversarial pass after the 10 % warm-up
    assert gan["train_flops_per_sample"] - generator["train_flops_per_sample"] == round(2.9 * d_pass)
