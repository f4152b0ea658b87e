"""The decoded-image cache: build, resume, verify, and read back through the data module."""

import json

import numpy as np
import pytest
import torch

from joint_colsr.data import CachedImages, CacheError, ColSRDataModule, ImageCache, ImageFolder, build_cache
from joint_colsr.data.coco import CocoSource
from joint_colsr.preprocess import preprocess
from joint_colsr.train import train

from .test_coco import make_tiny_coco


@pytest.fixture
def tiny_coco(tmp_path):
    return make_tiny_coco(tmp_path / "coco")


def _shard_digests(cache_dir):
    index = json.loads((cache_dir / "index.json").read_text())
    return {name: [s["sha256"] for s in entry["shards"]] for name, entry in index["splits"].items()}


def test_build_excludes_and_counts_grayscale_and_corrupt_photos(tiny_coco, tmp_path):
    index = build_cache(CocoSource(str(tiny_coco)), tmp_path / "c", output_size=32, shard_size=3, progress=False)
    train, val = index["splits"]["train"], index["splits"]["val"]
    assert train["complete"] and val["complete"]
    excluded = {k.split("/")[-1]: r for s in train["shards"] + val["shards"] for k, r in s["excluded"].items()}
    assert set(excluded) == {"000000000003.jpg", "000000000005.jpg", "000000000102.jpg"}
    assert excluded["000000000003.jpg"] == excluded["000000000102.jpg"] == "grayscale"
    assert excluded["000000000005.jpg"].startswith("corrupt or truncated")
    cache = ImageCache.open(tmp_path / "c", verify="full")
    assert len(cache.splits["train"]) == 5 and len(cache.splits["val"]) == 2
    assert cache.excluded_summary() == {"grayscale": 2, "corrupt or truncated": 1}
    assert cache.splits["train"].labels[0] == (1, 2)  # 000000000001.jpg: person, bicycle


def test_cached_validation_images_equal_the_jpeg_path(tiny_coco, tmp_path):
    """The cache holds exactly the evaluation protocol's reference images (whole photo, squash-resized)."""
    build_cache(CocoSource(str(tiny_coco)), tmp_path / "c", output_size=32, progress=False)
    from_jpeg = ColSRDataModule(CocoSource(str(tiny_coco)), batch_size=2, num_workers=0, input_size=16, output_size=32)
    from_cache = ColSRDataModule(CocoSource(str(tiny_coco)), batch_size=2, num_workers=0, input_size=16, output_size=32,
                                 cache=str(tmp_path / "c"))
    from_jpeg.setup("validate")
    from_cache.setup("validate")
    colour = [i for i in range(len(from_jpeg.val_set)) if from_jpeg.val_set[i]["skipped"] == 0]
    assert len(colour) == len(from_cache.val_set) == 2
    for j, i in enumerate(colour):
        assert torch.equal(from_jpeg.val_set[i]["rgb"], from_cache.val_set[j]["rgb"])


def test_interrupted_build_resumes_to_the_same_cache(tiny_coco, tmp_path):
    source = CocoSource(str(tiny_coco))
    build_cache(source, tmp_path / "whole", output_size=32, shard_size=2, progress=False)
    part = tmp_path / "part"
    build_cache(source, part, output_size=32, shard_size=2, progress=False, max_shards=2)
    with pytest.raises(CacheError, match=r"split 'train' is incomplete \(4 of 7 photos\).*rerun the same preprocess"):
        ImageCache.open(part)
    (part / "train-00002.npy.tmp").write_bytes(b"half a shard")  # a write the interruption cut short
    (part / "train-00001.npy").write_bytes(b"damaged")  # and a damaged shard: rebuilt from here on
    build_cache(source, part, output_size=32, shard_size=2, progress=False)
    assert _shard_digests(part) == _shard_digests(tmp_path / "whole")
    ImageCache.open(part, verify="full")


def test_open_verifies_the_shards(tiny_coco, tmp_path):
    cache_dir = tmp_path / "c"
    build_cache(CocoSource(str(tiny_coco)), cache_dir, output_size=32, progress=False)
    shard = cache_dir / "val-00000.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, one pixel changed: only the checksum can tell
    shard.write_bytes(bytes(data))
    ImageCache.open(cache_dir, verify="quick")
    with pytest.raises(CacheError, match="val-00000.npy fails its sha256 check"):
        ImageCache.open(cache_dir, verify="full")
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(CacheError, match="val-00000.npy has .* bytes, the index says"):
        ImageCache.open(cache_dir)
    with pytest.raises(CacheError, match="no index.json.*python -m joint_colsr.preprocess"):
        ImageCache.open(tmp_path / "nothing")


def test_a_cache_is_read_only_under_the_settings_it_was_built_with(tiny_coco, tmp_path):
    cache_dir = tmp_path / "c"
    build_cache(CocoSource(str(tiny_coco), categories=["person"]), cache_dir, output_size=32, progress=False)
    with pytest.raises(CacheError, match="other settings.*overwrite=true"):
        build_cache(CocoSource(str(tiny_coco)), cache_dir, output_size=32, progress=False)
    dm = ColSRDataModule(CocoSource(str(tiny_coco)), num_workers=0, input_size=16, output_size=32, cache=str(cache_dir))
    with pytest.raises(CacheError, match="was built from source .*person.*data.categories"):
        dm.setup("fit")
    dm = ColSRDataModule(CocoSource(str(tiny_coco), categories=["person"]), num_workers=0, input_size=16, output_size=64,
                         cache=str(cache_dir))
    with pytest.raises(CacheError, match="holds 32x32 images, data.output_size=64"):
        dm.setup("fit")
    build_cache(CocoSource(str(tiny_coco)), cache_dir, output_size=32, progress=False, overwrite=True)
    assert json.loads((cache_dir / "index.json").read_text())["source"]["categories"] is None


def test_training_reads_no_image_file_once_cached(tiny_coco, tmp_path):
    cache_dir = tmp_path / "c"
    build_cache(CocoSource(str(tiny_coco)), cache_dir, output_size=32, train_size=48, num_workers=2, progress=False)
    for jpg in tiny_coco.rglob("*.jpg"):
        jpg.unlink()  # the layout stays; the pixels are gone
    dm = ColSRDataModule(CocoSource(str(tiny_coco)), batch_size=2, num_workers=2, input_size=16, output_size=32,
                         cache=str(cache_dir), with_labels=True, train_samples_per_epoch=10)
    dm.setup("fit")
    assert dm.train_set.crop  # cached at 48 > 32: random resized crops
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(3)
    first = [b["rgb"] for b in loader]
    second = [b["rgb"] for b in loader]
    assert len(first) == 5 and all(torch.equal(a, b) for a, b in zip(first, second))  # pure function of the seed
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert batch["ab_target"].shape == (2, 2, 32, 32) and batch["labels"].shape == (2, 3)


def test_flip_only_augmentation_at_the_output_size(tmp_path, image_folder):
    build_cache(ImageFolder(str(image_folder)), tmp_path / "c", output_size=32, progress=False)
    split = ImageCache.open(tmp_path / "c").splits["train"]
    ds = CachedImages(split, 32, train=True, length=64)
    cached = torch.from_numpy(np.array(split.image(0)))
    outs = [ds[(0, seed)]["rgb"] for seed in range(16)]
    assert all(torch.equal(o, cached) or torch.equal(o, cached.flip(-1)) for o in outs)
    assert any(torch.equal(o, cached.flip(-1)) for o in outs) and any(torch.equal(o, cached) for o in outs)
    # The batched fetch the DataLoader uses gives the same samples, already collated.
    keys = [(i, 100 + i) for i in range(10)]
    batch = ds.__getitems__(keys)
    assert torch.equal(batch["rgb"], torch.stack([ds[k]["rgb"] for k in keys]))
    assert batch["index"].tolist() == list(range(10))


def test_preprocess_command_then_train_from_the_cache(compose_cfg, tiny_coco, tmp_path):
    data = ["data=coco", f"data.root={tiny_coco}", "data.num_workers=0", "data.output_size=64", "data.input_size=24", "data.source.val_images=2"]
    cfg = compose_cfg([*data, f"cache_dir={tmp_path / 'c'}", "progress=false"], config_name="preprocess")
    index = preprocess(cfg)
    assert index["splits"]["train"]["complete"] and index["sizes"] == {"train": 64, "val": 64}
    cfg = compose_cfg([*data, f"data.cache={tmp_path / 'c'}", "debug=tiny", "model.net.width_mult=0.0625",
                       "logger=none", "callbacks=none"])
    metrics = train(cfg)
    assert np.isfinite(metrics["val/psnr"]) and metrics["global_step"] == 2


def test_resume_refuses_a_source_that_lists_other_photos(tmp_path, image_folder):
    build_cache(ImageFolder(str(image_folder), val_fraction=0.0), tmp_path / "c", output_size=32, shard_size=2,
                progress=False, max_shards=1)
    for path in list(image_folder.rglob("*.*")):
        path.rename(path.with_name("renamed_" + path.name))  # same count, other photos
    # Refused at the source description (it names the files) before any shard is compared.
    with pytest.raises(CacheError, match="built with other settings .*files_sha256"):
        build_cache(ImageFolder(str(image_folder), val_fraction=0.0), tmp_path / "c", output_size=32, shard_size=2,
                    progress=False)


def test_train_from_the_cache_alone_without_data_root(compose_cfg, tiny_coco, tmp_path):
    # Copy a cache to a machine without COCO: data.root stays unset and nothing under it is needed.
    data = ["data=coco", "data.num_workers=0", "data.output_size=64", "data.input_size=32", "data.source.val_images=2"]
    preprocess(compose_cfg([*data, f"data.root={tiny_coco}", f"cache_dir={tmp_path / 'c'}", "progress=false"], config_name="preprocess"))
    moved = tmp_path / "coco_gone"
    tiny_coco.rename(moved)  # the photos and annotations are gone from where the cache was built
    cfg = compose_cfg([*data, f"data.cache={tmp_path / 'c'}", "data.with_labels=true", "model=ic_only", "model.net.classification=true",
                       "model.net.num_classes=3", "debug=tiny", "logger=none", "callbacks=none"])
    metrics = train(cfg)
    assert np.isfinite(metrics["val/psnr"]) and metrics["global_step"] == 2
    # Without a cache, data.root is still required, by name, at start-up.
    from joint_colsr.config_checks import ConfigError, check_config

    with pytest.raises(ConfigError, match="data.root must be set"):
        check_config(compose_cfg([*data, "debug=tiny"]))


def test_a_cache_from_before_colour_profiles_were_converted_warns(tmp_path, image_folder, caplog):
    build_cache(ImageFolder(str(image_folder)), tmp_path / "c", output_size=32, progress=False)
    index_path = tmp_path / "c" / "index.json"
    index = json.loads(index_path.read_text())
    assert index["colour"].startswith("embedded ICC profiles converted to sRGB")
    ImageCache.open(tmp_path / "c")
    assert "colour profiles" not in caplog.text
    del index["colour"]
    index_path.write_text(json.dumps(index))
    ImageCache.open(tmp_path / "c")  # still readable: a warning, not an error
    assert "before embedded colour profiles were converted" in caplog.text


def test_cached_validation_views_are_never_enlarged_crops(tiny_coco, tmp_path):
    from joint_colsr.data.datasets import CachedImages
    from joint_colsr.data.views import VALIDATION_VIEWS

    source = CocoSource(str(tiny_coco))
    build_cache(source, tmp_path / "s", output_size=32, progress=False)
    val = ImageCache.open(tmp_path / "s").splits["val"]
    with pytest.raises(ValueError, match="val_size=48"):
        CachedImages(val, 32, train=False, views=VALIDATION_VIEWS[:6])
    build_cache(source, tmp_path / "l", output_size=32, progress=False, val_size=48)
    large = ImageCache.open(tmp_path / "l").splits["val"]
    views = CachedImages(large, 32, train=False, views=VALIDATION_VIEWS[:6])
    assert large.size == 48 and views[1]["rgb"].shape == (3, 32, 32)
    # The 2/3-side views of a 48-pixel image are 32-pixel crops: copied, not resampled.
    assert torch.equal(views[2]["rgb"], torch.from_numpy(large.image(0)[:, :32, :32].copy()))
