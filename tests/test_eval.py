"""eval: baselines and checkpoints through one code path; every file of the contract; COCO-style breakdown."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from joint_colsr.run.config_checks import ConfigError
from joint_colsr.data import ImageFolder
from joint_colsr.eval import evaluate

from .conftest import compose_config

FAST = ["num_examples=2", "data.batch_size=4", "data.num_workers=0", "trainer.accelerator=cpu"]


class LabelledFolder(ImageFolder):
    """A folder whose images carry COCO-style labels (what the COCO source gives): even files
    show a person, odd files a dog, every third one also a car."""

    CATEGORIES = {1: {"name": "person", "supercategory": "person"}, 3: {"name": "car", "supercategory": "vehicle"},
                  18: {"name": "dog", "supercategory": "animal"}}

    def __init__(self, root: str, val_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(root, val_fraction=val_fraction, **kwargs)
        self._items = [dataclasses.replace(item, labels=(1 if i % 2 == 0 else 18,) + ((3,) if i % 3 == 0 else ()))
                       for i, item in enumerate(self._items)]

    @property
    def categories(self):
        return self.CATEGORIES


def _run(tmp_path, overrides, name="run"):
    cfg = compose_config("eval", [*FAST, *overrides], output_dir=tmp_path / name)
    return evaluate(cfg), tmp_path / name


def test_baselines_on_a_folder_score_every_image(tmp_path, image_folder):
    gray, gray_dir = _run(tmp_path, ["baseline=gray", "data=folder", f"data.root={image_folder}"], "gray")
    bicubic, _ = _run(tmp_path, ["baseline=bicubic", "data=folder", f"data.root={image_folder}"], "bicubic")
    assert gray["num_images"] == bicubic["num_images"] == 8  # no train/validation split at evaluation
    # Same a*b* (zero): protocol 1 agrees; the bicubic L* costs in protocol 2 and Y-PSNR.
    assert gray["psnr"] == pytest.approx(gray["psnr_gray"]) == pytest.approx(bicubic["psnr"])
    # gray is fed the ground-truth L*: labelled, and nothing of its L* is scored as if produced.
    assert gray["uses_ground_truth_l"] is True and bicubic["uses_ground_truth_l"] is False
    assert gray["psnr_joint"] is None and gray["ssim_joint"] is None and gray["psnr_y"] is None
    assert bicubic["psnr_joint"] < bicubic["psnr"] and bicubic["psnr_y"] < 60 and bicubic["ssim_joint"] < bicubic["ssim"]
    assert gray["colorfulness"] < 1.0 and gray["colorfulness_gap"] > 5
    saved = json.loads((gray_dir / "metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(gray["psnr"]) and saved["baseline"] == "gray"
    with open(gray_dir / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    assert sum(float(r["psnr"]) for r in rows) / 8 == pytest.approx(gray["psnr"], abs=1e-4)
    assert "| baseline=gray (GT-L* guided) | 8 |" in (gray_dir / "metrics.md").read_text()
    assert saved["uses_ground_truth_l"] is True and saved["psnr_joint"] is None
    assert rows[0]["psnr_joint"] == "" and float(rows[0]["psnr"]) > 0
    assert (gray_dir / "best_worst.png").read_bytes()[:4] == b"\x89PNG"


def test_unreadable_photo_is_skipped_counted_and_not_scored_twice(tmp_path, image_folder):
    broken = image_folder / "b" / "truncated.png"
    good = next(image_folder.rglob("*.png")).read_bytes()
    broken.write_bytes(good[: len(good) // 3])  # the header reads, the pixels do not
    metrics, run = _run(tmp_path, ["baseline=gray", "data=folder", f"data.root={image_folder}"])
    assert metrics["num_images"] == 8 and metrics["skipped"] == 1
    assert metrics["skipped_photos"] == ["b/truncated.png"]
    with open(run / "per_image.csv") as f:
        keys = [r["key"] for r in csv.DictReader(f)]
    assert len(keys) == len(set(keys)) == 8


def test_eval_from_a_cache_reports_the_photos_the_cache_excluded(tmp_path, image_folder):
    """Photos left out before evaluating are reported with their reasons, labelled by stage:
    when the cache was built (grayscale, truncated), at start-up (too small), while evaluating."""
    from PIL import Image

    from joint_colsr.data import build_cache

    from .conftest import random_photo

    rng = np.random.default_rng(1)
    Image.fromarray(random_photo(rng, 60, 80)).convert("L").save(image_folder / "gray.jpg")
    truncated = image_folder / "a" / "truncated.png"
    Image.fromarray(random_photo(rng, 60, 80)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    Image.fromarray(random_photo(rng, 10, 12)).save(image_folder / "tiny.png")
    cache = tmp_path / "cache"
    build_cache(ImageFolder(str(image_folder), val_fraction=1.0), cache, output_size=32, splits=("val",), progress=False)
    metrics, run = _run(tmp_path, ["baseline=gray", "data=folder", f"data.root={image_folder}", f"data.cache={cache}",
                                   "data.input_size=16", "data.output_size=32"])
    assert metrics["num_images"] == 8 and metrics["skipped"] == 0
    build = metrics["excluded_at_cache_build"]
    assert build["count"] == 2 and build["reasons"] == {"grayscale": 1, "corrupt or truncated": 1}
    assert set(build["photos"]) == {str(image_folder / "gray.jpg"), str(truncated)} and build["cache"] == str(cache)
    start = metrics["excluded_at_start_up"]
    assert start["count"] == 1 and start["photos"] == {str(image_folder / "tiny.png"): "too small (12x10, shorter side < 16)"}
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["excluded_at_cache_build"] == build and saved["excluded_at_start_up"] == start
    md = (run / "metrics.md").read_text()
    assert f"- excluded when the cache `{cache}` was built: 2 (1 grayscale, 1 corrupt or truncated)" in md \
        or f"- excluded when the cache `{cache}` was built: 2 (1 corrupt or truncated, 1 grayscale)" in md
    assert "- excluded at start-up (the source's checks, before the split): 1 (1 too small)" in md
    assert "- skipped while evaluating (could not be decoded or used): 0" in md
    # Without the cache the same photos are decoded while evaluating: skipped, not excluded at build.
    files, _ = _run(tmp_path, ["baseline=gray", "data=folder", f"data.root={image_folder}",
                               "data.input_size=16", "data.output_size=32"], "files")
    assert files["excluded_at_cache_build"] is None and files["excluded_at_start_up"] == start
    assert sorted(files["skipped_photos"]) == ["a/truncated.png", "gray.jpg"]
    assert files["psnr"] == pytest.approx(metrics["psnr"], abs=1e-4)


def test_checkpoint_eval_on_samples(tmp_path, tiny_ckpt):
    metrics, run = _run(tmp_path, [f"ckpt_path={tiny_ckpt}", "data.input_size=64"])
    assert metrics["input_size"] == 96  # the checkpoint's network decides the sizes
    assert metrics["num_images"] == 2 and metrics["model"].startswith("JointPaperNet")
    assert metrics["uses_ground_truth_l"] is False
    # The paper's net predicts no L*: its own L* is the bicubic upscaling of its input.
    assert metrics["psnr_joint"] < metrics["psnr"]
    for key in ("ssim", "ssim_joint", "psnr_ab", "psnr_y", "auc_ab", "colorfulness_gap"):
        assert isinstance(metrics[key], float)
    assert (run / "best_worst.png").exists() and not (run / "category.png").exists()
    # Protocol 1 is the training validation metric: same photos, same weights, same number.
    trained = json.loads((tiny_ckpt.parent.parent / "metrics.json").read_text())
    assert metrics["psnr"] == pytest.approx(trained["val/psnr"], abs=1e-4)
    assert metrics["psnr_gray"] == pytest.approx(trained["val/psnr_gray"], abs=1e-4)


def test_labelled_source_gives_supercategory_breakdown(tmp_path, image_folder):
    metrics, run = _run(tmp_path, ["baseline=bicubic", "data=folder", f"data.root={image_folder}",
                                   "data.source._target_=tests.test_eval.LabelledFolder"])
    groups = metrics["by_supercategory"]
    assert set(groups) == {"person", "animal", "vehicle"}
    assert groups["person"]["num_images"] == 4 and groups["vehicle"]["num_images"] == 3
    psnrs = [g["psnr"] for g in groups.values()]
    assert psnrs == sorted(psnrs)  # worst first
    assert "By COCO supercategory" in (run / "metrics.md").read_text()
    assert (run / "category.png").exists()
    with open(run / "per_image.csv") as f:
        assert {r["supercategories"] for r in csv.DictReader(f)} >= {"person", "animal"}


@pytest.mark.parametrize(
    "overrides,match",
    [
        ([], "set exactly one of ckpt_path"),
        (["baseline=gray", "ckpt_path=x.ckpt"], "set exactly one of ckpt_path"),
        (["baseline=sepia"], "baseline must be one of gray, bicubic"),
        (["ckpt_path=/nowhere/last.ckpt"], "ckpt_path=/nowhere/last.ckpt is not a file"),
        (["baseline=gray", "crop_border=-1"], "crop_border must be"),
    ],
)
def test_bad_eval_configs_fail_at_startup(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        _run(tmp_path, overrides)


def test_eval_reproduces_the_runs_degradation_from_the_checkpoint_alone(tmp_path):
    """A run trained on area-downscaled L* is scored on area-downscaled L*, from a checkpoint
    copied out of its run folder, with eval's defaults (bicubic) on the command line."""
    import shutil

    from joint_colsr.train import train

    run = tmp_path / "run"
    trained = train(compose_config("train", ["debug=tiny", "logger=none", "data.lowres_interpolation=area", "+data.min_side=20"],
                                   output_dir=run))
    alone = tmp_path / "copied" / "model.ckpt"
    alone.parent.mkdir()
    shutil.copy(run / "checkpoints" / "last.ckpt", alone)
    cfg = compose_config("eval", [*FAST, f"ckpt_path={alone}"], output_dir=tmp_path / "eval")
    assert cfg.data.lowres_interpolation == "bicubic"
    metrics = evaluate(cfg)
    assert cfg.data.lowres_interpolation == "area" and cfg.data.min_side == 20
    assert metrics["psnr"] == pytest.approx(trained["val/psnr"], abs=1e-4)


def _evaluate_random_batches(batches: int, batch_size: int):
    import torch

    from joint_colsr.assembly import build_eval_system
    from joint_colsr.color import rgb_uint8_to_lab_batch
    from joint_colsr.eval import Evaluator

    cfg = compose_config("eval", ["baseline=bicubic", "data.input_size=16", "data.output_size=32"])
    evaluator = Evaluator(build_eval_system(cfg), crop_border=2, num_examples=2)
    evaluator.system.eval()
    generator = torch.Generator().manual_seed(0)
    for step in range(batches):  # photos of ever better and ever worse PSNR: the kept examples change
        rgb = torch.randint(0, 256, (batch_size, 3, 4, 4), generator=generator, dtype=torch.uint8)
        rgb = torch.nn.functional.interpolate(rgb.float(), size=32, mode="bilinear").round().to(torch.uint8)
        batch = dict(rgb_uint8_to_lab_batch(rgb, 16), index=torch.arange(step * batch_size, (step + 1) * batch_size),
                     skipped=torch.zeros(batch_size, dtype=torch.long))
        with torch.no_grad():
            evaluator.test_step(batch, step)
    return evaluator


def test_evaluator_keeps_only_uint8_copies_of_its_example_images(monkeypatch):
    """Memory is bounded by num_examples, not by the batch size or the number of batches: the
    images kept for the figures are uint8 copies of one image each, never views of a batch;
    the metrics' temporaries are bounded by computing them a few images at a time."""
    import torch

    import joint_colsr.eval

    evaluator = _evaluate_random_batches(6, 20)  # 20 = a chunk of 16 + 4
    assert len(evaluator.rows) == 6 * 20 and len(evaluator.best) == len(evaluator.worst) == 2
    kept = [image for entry in (*evaluator.best, *evaluator.worst) for image in entry[2]]
    assert len(kept) == 2 * 2 * 4
    for image in kept:
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 32, 32)
        assert image.untyped_storage().nbytes() == image.numel(), "a kept image holds a larger storage (its batch)"
    # Chunked metrics are the metrics of the whole batch at once, image by image.
    monkeypatch.setattr(joint_colsr.eval, "METRICS_CHUNK", 1000)
    whole = _evaluate_random_batches(6, 20)
    for row, same in zip(evaluator.rows, whole.rows, strict=True):
        assert row["index"] == same["index"]
        assert all(row[k] == pytest.approx(same[k], rel=1e-5, abs=1e-5) for k in ("psnr", "ssim", "psnr_joint", "auc_ab", "psnr_gray"))


@pytest.mark.parametrize("psnrs", [[20.0, 22.0, 22.0, 21.0, 19.5], [21.0] * 5, [20.0, 23.0], [25.0]])
def test_best_worst_never_shows_a_photo_twice(monkeypatch, psnrs):
    import torch

    import joint_colsr.eval as eval_module

    monkeypatch.setattr(eval_module, "evaluation_row", lambda *a: [])  # pictures are not the point here
    evaluator = eval_module.Evaluator(torch.nn.Identity(), crop_border=0, num_examples=3, grid_category=None)
    for i, psnr in enumerate(psnrs):
        row = {"index": i, "key": f"p{i}", "psnr": psnr, "psnr_joint": None, "categories": []}
        evaluator.rows.append(row)
        evaluator._keep_examples(row, None, None, None, None)
    pairs = evaluator.best_worst_pairs()
    best, worst = [b[1] for b, _ in pairs], [w[1] for _, w in pairs]
    assert len(pairs) == min(3, len(psnrs) // 2)
    assert not set(best) & set(worst), (best, worst)
    ranked = sorted(range(len(psnrs)), key=lambda i: (-psnrs[i], i))
    assert best == ranked[:len(pairs)] and worst == ranked[::-1][:len(pairs)]
