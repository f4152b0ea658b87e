"""The COCO 2017 source on a tiny COCO-layout folder built here (images + instances JSON)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from joint_colsr.assembly import build_datamodule
from joint_colsr.data import ColSRDataModule
from joint_colsr.data.coco import CocoSource

from .conftest import random_photo

CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 2, "name": "bicycle", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
]

#: split -> [(file name, kind, category ids)]; kind: colour | gray_rgb | gray_l | corrupt
TINY_COCO = {
    "train2017": [
        ("000000000001.jpg", "colour", [1, 1, 2]),
        ("000000000002.jpg", "colour", [18]),
        ("000000000003.jpg", "gray_rgb", [1]),
        ("000000000004.jpg", "colour", [1, 18]),
        ("000000000005.jpg", "corrupt", [2]),
        ("000000000006.jpg", "colour", []),
        ("000000000007.jpg", "colour", [2]),
    ],
    "val2017": [
        ("000000000101.jpg", "colour", [1]),
        ("000000000102.jpg", "gray_l", [18]),
        ("000000000103.jpg", "colour", [2, 18]),
    ],
}


def make_tiny_coco(root: Path) -> Path:
    """The COCO 2017 layout with a few real JPEGs, a grayscale photo stored as RGB, a corrupt file."""
    rng = np.random.default_rng(7)
    (root / "annotations").mkdir(parents=True)
    ann_id = 1
    for folder, entries in TINY_COCO.items():
        (root / folder).mkdir()
        images, annotations = [], []
        for file_name, kind, cats in entries:
            rgb = random_photo(rng, 72, 96)
            path = root / folder / file_name
            if kind == "gray_rgb":
                Image.fromarray(np.repeat(rgb[..., :1], 3, axis=2)).save(path, quality=90)
            elif kind == "gray_l":
                Image.fromarray(rgb[..., 0]).save(path, quality=90)
            else:
                Image.fromarray(rgb).save(path, quality=90)
            if kind == "corrupt":
                path.write_bytes(path.read_bytes()[:400])
            image_id = int(file_name.split(".")[0])
            images.append({"id": image_id, "file_name": file_name, "width": 96, "height": 72})
            for cat in cats:
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": [1, 1, 10, 10],
                                    "area": 100.0, "iscrowd": 0, "segmentation": [[1, 1, 11, 1, 11, 11]]})
                ann_id += 1
        data = {"info": {"description": "tiny"}, "images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def tiny_coco(tmp_path) -> Path:
    return make_tiny_coco(tmp_path / "coco")


def test_split_is_cocos_own_with_labels_and_categories(tiny_coco):
    source = CocoSource(str(tiny_coco))
    train, val = source.split()
    assert [i.key for i in train] == [f"train2017/{f}" for f, _, _ in TINY_COCO["train2017"]]
    assert [i.key for i in val] == [f"val2017/{f}" for f, _, _ in TINY_COCO["val2017"]]
    assert [i.labels for i in train] == [tuple(sorted(set(c))) for _, _, c in TINY_COCO["train2017"]]
    assert all(source.is_validation_group(i.group) for i in val) and not any(source.is_validation_group(i.group) for i in train)
    assert source.categories == {c["id"]: {"name": c["name"], "supercategory": c["supercategory"]} for c in CATEGORIES}


def test_categories_select_images_containing_any_of_them(tiny_coco):
    train, val = CocoSource(str(tiny_coco), categories=["person"]).split()
    assert {i.key.split("/")[1] for i in train} == {"000000000001.jpg", "000000000003.jpg", "000000000004.jpg"}
    assert all(1 in i.labels for i in train + val)
    train, _ = CocoSource(str(tiny_coco), categories=["animal", "bicycle"]).split()  # supercategory or name
    assert {i.key.split("/")[1] for i in train} == {"000000000001.jpg", "000000000002.jpg", "000000000004.jpg",
                                                    "000000000005.jpg", "000000000007.jpg"}
    with pytest.raises(ValueError, match=r"data.categories: unknown COCO categories \['unicorn'\]; choose from"):
        CocoSource(str(tiny_coco), categories=["unicorn"]).split()


def test_max_images_caps_each_split(tiny_coco):
    train, val = CocoSource(str(tiny_coco), max_images=2).split()
    assert len(train) == 2 and len(val) == 2


@pytest.mark.parametrize("remove", ["val2017", "annotations/instances_train2017.json"])
def test_missing_layout_fails_at_start_up_with_the_expected_layout(tiny_coco, remove):
    target = tiny_coco / remove
    if target.is_dir():
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(FileNotFoundError, match=rf"(?s)missing .*{remove}.*expected the COCO 2017 layout.*instances_val2017.json"):
        CocoSource(str(tiny_coco))


def test_missing_image_files_are_counted_and_too_many_stop_start_up(tiny_coco):
    (tiny_coco / "train2017" / "000000000007.jpg").unlink()
    source = CocoSource(str(tiny_coco), max_bad_fraction=0.5)
    train, _ = source.split()
    assert len(train) == 6 and "listed in the annotations but missing" in source.skip_report.summary()
    with pytest.raises(RuntimeError, match=r"(?s)1 of 7 images of train2017 are missing.*000000000007.jpg"):
        CocoSource(str(tiny_coco), max_bad_fraction=0.1).split()


def test_grayscale_and_corrupt_photos_are_skipped_and_counted_and_labels_reach_the_batch(tiny_coco):
    dm = ColSRDataModule(CocoSource(str(tiny_coco)), batch_size=1, num_workers=0, input_size=16, output_size=32,
                         with_labels=True, seed=0)
    dm.setup("fit")
    assert dm.num_classes == 3
    skipped = 0
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for raw in loader:
            rgb = raw["rgb"][0].to(torch.int16)
            assert (rgb[0] - rgb[1]).abs().max() > 2  # never a grayscale reference image
            batch = dm.on_after_batch_transfer(raw, 0)
            assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (1, 3)
            skipped += int(raw["skipped"].sum())
    # The gray-as-RGB and the corrupt training photo, the gray (mode L) validation photo: each at least once.
    assert skipped >= 3
    sample = dm.val_set[0]  # val2017/000000000101.jpg: a person
    assert sample["labels"].tolist() == [1, 0, 0]


def test_data_coco_config_keys(compose_cfg, tiny_coco):
    cfg = compose_cfg(["data=coco", f"data.root={tiny_coco}", "data.categories=[dog]", "data.max_images=5",
                       "data.batch_size=2", "data.num_workers=0", "data.with_labels=true", "data.source.validation=val2017"])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    assert isinstance(dm.source, CocoSource) and dm.source.describe() == {"name": "coco", "categories": ["dog"], "max_images": 5}
    assert {i.key for i in dm.train_set.items} == {"train2017/000000000002.jpg", "train2017/000000000004.jpg"}
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["labels"].shape == (2, 3) and (batch["labels"][:, 2] == 1).all()  # column of id 18 (dog)


def test_heldout_validation_is_a_fixed_train2017_slice_and_val2017_is_left_for_eval(tiny_coco, compose_cfg):
    """data=coco validates on a seeded slice of train2017; no photo is in two splits; eval scores val2017."""
    from joint_colsr.eval import prepare_test_data

    cfg = compose_cfg(["data=coco", f"data.root={tiny_coco}", "data.source.val_images=2", "data.num_workers=0"])
    assert cfg.data.source.validation == "heldout"  # the default of data=coco
    source = build_datamodule(cfg).source
    train, val = source.split()
    test_keys = {i.key for i in CocoSource(str(tiny_coco)).split()[1]}  # val2017
    train_keys, val_keys = {i.key for i in train}, {i.key for i in val}
    assert len(val_keys) == 2 and len(train_keys) == len(TINY_COCO["train2017"]) - 2
    assert not train_keys & val_keys and not (train_keys | val_keys) & test_keys
    assert all(k.startswith("train2017/") for k in val_keys)
    assert all(source.is_validation_group(k) for k in val_keys) and not any(source.is_validation_group(k) for k in train_keys)
    # Fixed: the same slice whatever the listing order; another split_seed gives another slice.
    again = CocoSource(str(tiny_coco), validation="heldout", val_images=2).split()[1]
    assert {i.key for i in again} == val_keys
    other = [{i.key for i in CocoSource(str(tiny_coco), validation="heldout", val_images=2, split_seed=s).split()[1]}
             for s in range(1, 6)]
    assert any(o != val_keys for o in other)
    with pytest.raises(ValueError, match="val_images"):
        CocoSource(str(tiny_coco), validation="heldout", val_images=100).split()
    # eval keeps val2017 for itself.
    prepare_test_data(cfg)
    assert {i.key for i in build_datamodule(cfg).source.split()[1]} == test_keys
