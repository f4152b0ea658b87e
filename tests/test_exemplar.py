"""Exemplars (issue 26): which photo steers each sample, the warp, the device batch, the eval
protocols and the exemplar-colour metric (docs/architecture.md, "Exemplar-guided mode")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from joint_colsr.data import ColSRDataModule, SamplePhotos
from joint_colsr.data.exemplars import (
    NONE,
    OTHER,
    WARPED,
    ExemplarPlan,
    exemplar_ab_histogram_intersection,
    warp_images,
    warp_thetas,
)
from joint_colsr.data.sampler import sample_keys

from ._cli import output_tail, run_command
from .test_coco import make_tiny_coco

KEYS = sample_keys(3, 0, np.arange(400))


def test_random_and_same_category_exemplars_are_never_the_photo_itself():
    photos = np.arange(400) % 7
    kinds, others, thetas = ExemplarPlan("random", 7).plan(photos, KEYS)
    assert (kinds == OTHER).all() and (others != photos).all() and set(others) == set(range(7))
    assert thetas.shape == (400, 2, 3) and thetas.dtype == np.float32
    groups = [["animal"], ["animal", "vehicle"], ["vehicle"], [], ["person"], ["person"], ["animal"]]
    kinds, others, _ = ExemplarPlan("same_category", 7, groups).plan(photos, KEYS)
    assert (others != photos).all()
    for photo, other in zip(photos, others):
        if groups[photo] and photo != 3:
            assert set(groups[photo]) & set(groups[other]), (photo, other)  # a shared supercategory
    # The same keys give the same plan (file path, cache path, a resumed run); other keys another.
    again = ExemplarPlan("same_category", 7, groups).plan(photos, KEYS)
    assert np.array_equal(again[1], others)
    assert not np.array_equal(ExemplarPlan("random", 7).plan(photos, KEYS ^ np.uint64(1))[1], ExemplarPlan("random", 7).plan(photos, KEYS)[1])


def test_mix_and_drop_give_both_modes_in_stated_shares():
    kinds, others, _ = ExemplarPlan("mix", 5, drop=0.25).plan(np.arange(400) % 5, KEYS)
    shares = {k: float((kinds == k).mean()) for k in (NONE, WARPED, OTHER)}
    assert abs(shares[NONE] - 0.25) < 0.08 and abs(shares[WARPED] - 0.375) < 0.08 and abs(shares[OTHER] - 0.375) < 0.08
    assert ((others >= 0) == (kinds == OTHER)).all()


def test_plans_refuse_what_cannot_be_done():
    with pytest.raises(ValueError, match="same_category needs photos with categories"):
        ExemplarPlan("same_category", 5)
    with pytest.raises(ValueError, match="needs another photo"):
        ExemplarPlan("random", 1)
    with pytest.raises(ValueError, match="exemplar_drop must be in"):
        ExemplarPlan("mix", 5, drop=1.5)
    with pytest.raises(ValueError, match="exemplar must be one of"):
        ExemplarPlan("nearest", 5)
    with pytest.raises(ValueError, match="data.exemplar must be one of"):
        ColSRDataModule(SamplePhotos(), exemplar="warped_gt")  # an evaluation protocol, not a training kind


def test_the_warp_moves_pixels_and_keeps_colours():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8))
    identity = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]] * 2)
    assert torch.equal(warp_images(image, identity, 32), image)  # the identity map resamples nothing
    thetas = torch.from_numpy(warp_thetas(np.random.default_rng(1).random((2, 5))))
    warped = warp_images(image, thetas, 32)
    assert warped.shape == image.shape and not torch.equal(warped, image)
    flat = torch.full((1, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(warp_images(flat, thetas[:1], 24), torch.full((1, 3, 24, 24), 77, dtype=torch.uint8))  # colours unchanged


def test_exemplar_colour_intersection_is_one_for_the_same_colours_and_zero_for_disjoint_ones():
    ab = torch.rand(2, 2, 8, 8) * 0.5
    assert torch.allclose(exemplar_ab_histogram_intersection(ab, ab.flip(-1)), torch.ones(2))
    assert torch.allclose(exemplar_ab_histogram_intersection(ab, -ab - 0.5), torch.zeros(2))


@pytest.mark.parametrize("kind", ["warped_self", "random", "mix"])
def test_batches_carry_exemplars_on_the_file_and_the_cache_path_alike(kind, tmp_path):
    from joint_colsr.data.cache import build_cache

    root = tmp_path / "cache"
    build_cache(SamplePhotos(), root, output_size=32, train_size=32, shard_size=4, progress=False)
    settings = {"batch_size": 4, "num_workers": 0, "input_size": 16, "output_size": 32, "train_samples_per_epoch": 8, "seed": 2,
                "exemplar": kind, "exemplar_drop": 0.25, "exemplar_size": 24, "hflip": False, "train_crop": "whole"}
    batches = {}
    for name, extra in (("files", {"source": SamplePhotos()}), ("cache", {"source": None, "cache": str(root)})):
        dm = ColSRDataModule(**extra, **settings)
        dm.setup("fit")
        batches[name] = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    for name, batch in batches.items():  # each path draws from its own sample keys (as its crops do)
        assert batch["exemplar"].shape == (4, 3, 24, 24) and batch["exemplar"].dtype == torch.float32, name
        assert (batch["exemplar"][~batch["exemplar_mask"]] == 0).all()
        assert ((batch["exemplar_index"] >= 0) <= batch["exemplar_mask"]).all()
        photos = batch["index"] % 8
        assert (batch["exemplar_index"] != photos).all()  # never the sample's own photo
        if kind == "warped_self":  # its own colours: nearly the target's a*b* distribution
            own = exemplar_ab_histogram_intersection(batch["ab_target"], batch["exemplar"][:, 1:])[batch["exemplar_mask"]]
            assert own.min() > 0.5, name


def test_same_category_exemplars_on_coco_share_a_supercategory(tmp_path):
    from joint_colsr.data.coco import CocoSource

    source = CocoSource(str(make_tiny_coco(tmp_path / "coco")))
    dm = ColSRDataModule(source, batch_size=4, num_workers=0, input_size=16, output_size=32, train_samples_per_epoch=16,
                         exemplar="same_category", val_exemplar="random")
    dm.setup("fit")
    supers = [{source.categories[c]["supercategory"] for c in item.labels} for item in dm.train_set.items]
    seen = 0
    for batch in dm.train_dataloader():
        lab = dm.on_after_batch_transfer(batch, 0)
        for index, other in zip(lab["index"].tolist(), lab["exemplar_index"].tolist()):
            photo = index % len(dm.train_set.items)
            assert other != photo
            if other >= 0 and supers[photo] and any(supers[p] & supers[photo] for p in range(len(supers)) if p != photo):
                assert supers[photo] & supers[other]
                seen += 1
    assert seen > 0


def test_eval_protocols_name_the_exemplar_and_flag_ground_truth_colour(tiny_ckpt, tmp_path):
    for protocol in ("random", "warped_gt"):
        out = tmp_path / protocol
        proc = run_command("eval", f"ckpt_path={tiny_ckpt}", f"exemplar={protocol}", f"hydra.run.dir={out}", cwd=tmp_path)
        assert proc.returncode == 0, output_tail(proc)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["exemplar"] == protocol and metrics["uses_ground_truth_colour"] == (protocol == "warped_gt")
        assert 0 <= metrics["exemplar_ab_intersection"] <= 1
        rows = [line.split(",") for line in (out / "per_image.csv").read_text().splitlines()]
        header = rows[0]
        for row in rows[1:]:
            key, exemplar = row[header.index("key")], row[header.index("exemplar")]
            assert exemplar == (f"warped:{key}" if protocol == "warped_gt" else exemplar) and exemplar != key
        table = (out / "metrics.md").read_text()
        assert f"[exemplar: {protocol}" in table and (("upper bound" in table) == (protocol == "warped_gt"))
    proc = run_command("eval", f"ckpt_path={tiny_ckpt}", "exemplar=nearest", f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path)
    assert proc.returncode != 0 and "exemplar must be one of" in proc.stderr
