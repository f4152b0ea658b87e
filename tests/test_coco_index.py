"""The compact COCO annotation index: the same photos, labels and order as pycocotools' reading;
parsed once, reused, rebuilt when the file changes, safe with concurrent builders; eval reads val2017 only."""

import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from joint_colsr.bench.coco_synth import make_synthetic_coco
from joint_colsr.data import ColSRDataModule
from joint_colsr.data.coco import CocoSource, heldout_keys
from joint_colsr.data.coco_index import BESIDE_DATA, load_index, parse_instances

from .conftest import hang_bound
from .test_coco import make_tiny_coco


@pytest.fixture(scope="module")
def synth_coco(tmp_path_factory) -> Path:
    """A synthetic COCO layout (crowd RLE masks, images without annotations, unsorted listings)."""
    root = tmp_path_factory.mktemp("synth") / "coco"
    make_synthetic_coco(root, train_images=300, val_images=60, seed=3)
    return root


def reference_items(root: Path, folder: str, category_names, max_images):
    """Today's reading, as CocoSource did it through pycocotools before the index: (key, path, labels)."""
    from pycocotools.coco import COCO

    coco = COCO(str(root / "annotations" / f"instances_{folder}.json"))
    if category_names is None:
        image_ids = set(coco.getImgIds())
    else:
        cats = coco.loadCats(coco.getCatIds())
        wanted = sorted({c["id"] for c in cats for n in category_names if n in (c["name"], c["supercategory"])})
        image_ids = set().union(*(coco.getImgIds(catIds=[c]) for c in wanted))
    image_ids = sorted(image_ids)[:max_images]
    categories = {c["id"]: {"name": c["name"], "supercategory": c["supercategory"]} for c in coco.loadCats(coco.getCatIds())}
    items = [(f"{folder}/{coco.imgs[i]['file_name']}", str(root / folder / coco.imgs[i]["file_name"]),
              tuple(sorted({a["category_id"] for a in coco.imgToAnns.get(i, [])}))) for i in image_ids]
    return items, categories


def _rows(items):
    return [(i.key, i.path, i.labels) for i in items]


def _origin(caplog, folder: str) -> str:
    """Where the last start's index of ``folder`` came from, as CocoSource logged it."""
    prefix = f"COCO {folder}: annotation index "
    return [r.getMessage()[len(prefix):] for r in caplog.records if r.getMessage().startswith(prefix)][-1]


@pytest.mark.parametrize("validation", ["heldout", "val2017"])
@pytest.mark.parametrize("categories,max_images", [(None, None), (["person"], None), (["animal", "bicycle"], 40), (None, 25)])
def test_items_labels_and_order_equal_pycocotools_reading(synth_coco, tmp_path, caplog, validation, categories, max_images):
    caplog.set_level(logging.INFO, logger="joint_colsr.data.coco")
    train_ref, cats_ref = reference_items(synth_coco, "train2017", categories, max_images)
    val_ref, _ = reference_items(synth_coco, "val2017", categories, max_images)
    if validation == "heldout":
        held = heldout_keys([k for k, _, _ in train_ref], 20, 0)
        train_ref, val_ref = [r for r in train_ref if r[0] not in held], [r for r in train_ref if r[0] in held]
    for attempt in ("parsed", "read"):  # the first start parses, the second reads the stored index
        source = CocoSource(str(synth_coco), categories=categories, max_images=max_images, validation=validation,
                            val_images=20, index_dir=str(tmp_path / "index"))
        train, val = source.split()
        assert _rows(train) == train_ref and _rows(val) == val_ref
        assert all(i.group == i.key for i in train + val)
        assert all(source.is_validation_group(i.group) for i in val) and not any(source.is_validation_group(i.group) for i in train)
        assert source.categories == cats_ref and list(source.categories) == list(cats_ref)
        assert _origin(caplog, "train2017").startswith(attempt)
    assert len(cats_ref) == 80 and any(r[2] == () for r in reference_items(synth_coco, "train2017", None, None)[0])


def test_synthetic_layout_reads_as_coco(tmp_path):
    from pycocotools.coco import COCO

    stats = make_synthetic_coco(tmp_path / "c", train_images=50, val_images=10, seed=1)
    coco = COCO(str(tmp_path / "c" / "annotations" / "instances_train2017.json"))
    assert len(coco.imgs) == stats["train2017"]["images"] == 50
    assert len(coco.anns) == stats["train2017"]["annotations"] == round(50 * 860_001 / 118_287)
    assert any(a["iscrowd"] for a in coco.anns.values()) or stats["train2017"]["annotations"] < 100
    assert sorted(os.listdir(tmp_path / "c" / "train2017")) == sorted(i["file_name"] for i in coco.imgs.values())
    assert make_synthetic_coco(tmp_path / "d", train_images=50, val_images=10, seed=1) == stats  # seeded
    assert ((tmp_path / "c" / "annotations" / "instances_train2017.json").read_bytes()
            == (tmp_path / "d" / "annotations" / "instances_train2017.json").read_bytes())


def _garble_middle(path: Path) -> None:
    """Change bytes in the middle of the file, keeping its size, its ends and its mtime: what
    the index key does not see, so only a real parse could notice."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = b"\x00" * 64
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_second_start_reads_the_index_and_never_the_json(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="joint_colsr.data.coco")
    root = tmp_path / "coco"
    make_synthetic_coco(root, train_images=1500, val_images=20)  # > 2 MiB: the key hashes only the ends
    first = CocoSource(str(root), validation="val2017").split()
    stored = sorted((root / "annotations" / BESIDE_DATA).glob("instances_train2017.*.npz"))
    assert len(stored) == 1
    before = stored[0].stat()
    annotations = root / "annotations" / "instances_train2017.json"
    _garble_middle(annotations)
    with pytest.raises(ValueError, match="is not a COCO instances file"):
        parse_instances(annotations)  # a parse would fail now ...
    source = CocoSource(str(root), validation="val2017")
    second = source.split()  # ... so this start read the index alone
    assert _origin(caplog, "train2017") == f"read from {stored[0]}"
    assert [_rows(s) for s in second] == [_rows(s) for s in first]
    after = stored[0].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_an_edited_annotation_file_is_parsed_again_and_its_old_index_removed(tmp_path):
    import json

    root = make_tiny_coco(tmp_path / "coco")
    folder = root / "annotations" / BESIDE_DATA
    assert len(CocoSource(str(root)).split()[0]) == 7
    old = sorted(folder.glob("instances_train2017.*.npz"))
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["images"].append({"id": 8, "file_name": "000000000008.jpg", "width": 96, "height": 72})
    data["annotations"].append({"id": 99, "image_id": 8, "category_id": 18, "bbox": [1, 1, 2, 2], "area": 4.0, "iscrowd": 0,
                                "segmentation": [[1, 1, 3, 1, 3, 3]]})
    path.write_text(json.dumps(data))
    (root / "train2017" / "000000000008.jpg").write_bytes((root / "train2017" / "000000000001.jpg").read_bytes())
    train, _ = CocoSource(str(root)).split()
    assert train[-1].key == "train2017/000000000008.jpg" and train[-1].labels == (18,)
    new = sorted(folder.glob("instances_train2017.*.npz"))
    assert len(old) == len(new) == 1 and old != new  # the earlier version's index is gone
    # A damaged index is rebuilt, never trusted.
    new[0].write_bytes(new[0].read_bytes()[:100])
    assert CocoSource(str(root)).split()[0][-1].labels == (18,)
    assert sorted(folder.glob("instances_train2017.*.npz")) == new and new[0].stat().st_size > 100
    assert not list(folder.glob(".*.tmp"))


def test_unwritable_data_folder_uses_the_user_cache_and_index_dir_is_honoured(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="joint_colsr.data.coco")
    root = make_tiny_coco(tmp_path / "coco")
    (root / "annotations" / BESIDE_DATA).write_text("not a folder")  # as a read-only data set: mkdir fails
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    expected = _rows(CocoSource(str(root)).split()[0])
    cached = list((tmp_path / "xdg" / "joint_colsr" / "coco_index").glob("instances_*.npz"))
    assert len(cached) == 2  # train2017 and val2017
    source = CocoSource(str(root))
    assert _rows(source.split()[0]) == expected and _origin(caplog, "train2017").startswith("read from " + str(tmp_path / "xdg"))
    source = CocoSource(str(root), index_dir=str(tmp_path / "mine"))
    assert _rows(source.split()[0]) == expected and len(list((tmp_path / "mine").glob("instances_*.npz"))) == 2


def _build(path, barrier, results):
    barrier.wait()  # every builder starts at once, as DDP ranks do
    index = load_index(path)
    results.put((index.origin.split(" ")[0], index.image_ids.tolist(), index.label_ids.tolist()))


def test_concurrent_builders_parse_once_and_all_read_the_same_index(tmp_path):
    root = tmp_path / "coco"
    make_synthetic_coco(root, train_images=2000, val_images=10, image_files=False)
    path = root / "annotations" / "instances_train2017.json"
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_build, args=(path, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [results.get(timeout=hang_bound(120)) for _ in procs]
    for p in procs:
        p.join(timeout=hang_bound(60))
        assert p.exitcode == 0
    assert sorted(origin for origin, _, _ in got) == ["parsed", "read", "read", "read"]
    assert all(g[1:] == got[0][1:] for g in got) and len(got[0][1]) == 2000
    folder = root / "annotations" / BESIDE_DATA
    assert len(list(folder.glob("instances_train2017.*.npz"))) == 1 and not list(folder.glob(".*.tmp"))


def test_eval_and_validate_stages_read_only_what_validates(tmp_path):
    root = make_tiny_coco(tmp_path / "coco")
    (root / "annotations" / "instances_train2017.json").write_text("[]")  # unreadable train2017 annotations
    dm = ColSRDataModule(CocoSource(str(root), validation="val2017"), batch_size=1, num_workers=0, input_size=16, output_size=32)
    dm.setup("test")  # what eval does: val2017 only
    assert [i.key for i in dm.val_set.items] == ["val2017/000000000101.jpg", "val2017/000000000102.jpg", "val2017/000000000103.jpg"]
    assert dm.train_set is None and dm.num_classes == 3
    with pytest.raises(ValueError, match=r"instances_train2017.json is not a COCO instances file"):
        dm.setup("fit")
    # The held-out slice is a part of train2017: validating on it must read train2017.
    with pytest.raises(ValueError, match=r"instances_train2017.json is not a COCO instances file"):
        ColSRDataModule(CocoSource(str(root), validation="heldout", val_images=2), batch_size=1, num_workers=0,
                        input_size=16, output_size=32).setup("validate")


def test_annotation_file_that_is_not_instances_is_named(tmp_path):
    path = tmp_path / "captions_train2017.json"
    path.write_text('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 1, "caption": "x"}]}')
    with pytest.raises(ValueError, match=r"captions_train2017.json is not a COCO instances file"):
        parse_instances(path)
    path.write_text('{"images": [{"id": 2, "file_name": "b.jpg"}, {"id": 1, "file_name": "a.jpg"}], "categories": []}')
    index = parse_instances(path)  # no annotations: pycocotools reads it too
    assert index.image_ids.tolist() == [1, 2] and index.file_names.tolist() == ["a.jpg", "b.jpg"]
    assert np.diff(index.label_starts).tolist() == [0, 0]


def test_eval_on_coco_never_reads_train2017(tmp_path):
    from joint_colsr.eval import evaluate

    from .conftest import compose_config

    root = make_tiny_coco(tmp_path / "coco")
    (root / "annotations" / "instances_train2017.json").write_text("[]")  # reading it would fail
    cfg = compose_config("eval", ["baseline=gray", "data=coco", f"data.root={root}", "data.input_size=16", "data.output_size=32",
                                  "data.batch_size=2", "data.num_workers=0", "num_examples=1", "trainer.accelerator=cpu"],
                         output_dir=tmp_path / "eval")
    metrics = evaluate(cfg)
    assert metrics["num_images"] + metrics["skipped"] == 3  # val2017's photos, the grayscale one skipped
