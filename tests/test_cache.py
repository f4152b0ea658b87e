"""The decoded-image cache: build, resume, verify, and read back through the data module."""

import json

import numpy as np
import pytest
import torch

from joint_colsr.data import CachedImages, CacheError, ColSRDataModule, ImageCache, ImageFolder, build_cache
from joint_colsr.data.cache.store import read_index, summarize
from joint_colsr.data.coco import CocoSource
from joint_colsr.preprocess import preprocess
from joint_colsr.train import train

from .test_coco import make_tiny_coco


@pytest.fixture
def tiny_coco(tmp_path):
    return make_tiny_coco(tmp_path / "coco")


def _shard_digests(cache_dir):
    index = read_index(cache_dir)
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
    # One photo a shard: the shards of excluded photos hold no image, and are still valid files.
    build_cache(CocoSource(str(tiny_coco)), tmp_path / "one", output_size=32, shard_size=1, progress=False)
    assert ImageCache.open(tmp_path / "one", verify="full").excluded_summary() == cache.excluded_summary()


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
    ImageCache.open(cache_dir, verify="quick")  # first use: every shard's sha256 checked, then remembered
    stamps = json.loads((cache_dir / "verified.json").read_text())
    assert sorted(stamps) == sorted(p.name for p in cache_dir.glob("*.npy"))
    intact = shard.read_bytes()
    data = bytearray(intact)
    data[-1] ^= 0xFF  # same size, one pixel changed: only the checksum can tell
    shard.write_bytes(bytes(data))
    for verify in ("quick", "full"):  # the default sees that the file changed since it was verified
        with pytest.raises(CacheError, match="val-00000.npy fails its sha256 check"):
            ImageCache.open(cache_dir, verify=verify)
    ImageCache.open(cache_dir, verify="none")
    header = bytearray(intact)
    header[30] = ord("'")  # inside the .npy header's dict: np.load raises SyntaxError / TokenError
    shard.write_bytes(bytes(header))
    with pytest.raises(CacheError, match="shard val-00000.npy is not a readable .npy file .its header is damaged"):
        ImageCache.open(cache_dir)
    shard.write_bytes(intact)
    ImageCache.open(cache_dir)  # the intact bytes again: checked again (new mtime) and accepted
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
    from joint_colsr.run.config_checks import ConfigError, check_config

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


def test_cached_validation_views_equal_the_file_path_views(image_folder, tmp_path):
    """Every stored view k of every validation photo is byte for byte what the file path makes."""
    source = ImageFolder(str(image_folder), val_fraction=0.5)
    common = {"batch_size": 4, "num_workers": 0, "input_size": 16, "output_size": 32, "val_views": 6}
    build_cache(source, tmp_path / "c", output_size=32, val_views=6, shard_size=2, progress=False)
    from_files = ColSRDataModule(source, **common)
    from_cache = ColSRDataModule(source, cache=str(tmp_path / "c"), **common)
    from_files.setup("validate")
    from_cache.setup("validate")
    photos = len(source.split()[1])
    assert photos >= 2 and len(from_cache.val_set) == len(from_files.val_set) == 6 * photos
    for i in range(len(from_files.val_set)):
        assert torch.equal(from_files.val_set[i]["rgb"], from_cache.val_set[i]["rgb"]), f"photo {i // 6}, view {i % 6}"
    batch = next(iter(from_cache.val_dataloader()))  # the batched fetch: the same images
    assert torch.equal(batch["rgb"], torch.stack([from_files.val_set[i]["rgb"] for i in range(4)]))
    # Fewer views than stored: the first ones. More than stored: an error naming the rebuild.
    three = ColSRDataModule(source, cache=str(tmp_path / "c"), **{**common, "val_views": 3})
    three.setup("validate")
    assert torch.equal(three.val_set[4]["rgb"], from_files.val_set[7]["rgb"])  # photo 1, view 1
    build_cache(source, tmp_path / "one", output_size=32, progress=False)
    with pytest.raises(ValueError, match=r"stores 1 view\(s\).*data.val_views<=1.*val_views=6"):
        ColSRDataModule(source, cache=str(tmp_path / "one"), **common).setup("validate")


def test_files_skipped_at_start_up_are_in_the_cache_index(image_folder, tmp_path):
    (image_folder / "empty.jpg").write_bytes(b"")
    (image_folder / "a" / "notes.png").write_text("not an image")
    source = ImageFolder(str(image_folder))
    index = build_cache(source, tmp_path / "c", output_size=32, progress=False)
    skipped = {path.split("/")[-1]: reason for path, reason in index["skipped_at_start"].items()}
    assert skipped == {"empty.jpg": "empty file (0 bytes)", "notes.png": "not an image PIL can identify"}
    line = summarize(index).splitlines()[-1]
    assert line.startswith("start-up: the source skipped 2 files (") and "1 empty file" in line and "1 not an image" in line
    cache = ImageCache.open(tmp_path / "c")
    assert cache.excluded_summary() == {"empty file": 1, "not an image PIL can identify": 1}


def test_resume_ignores_a_torn_last_line_and_keeps_the_appended_index(image_folder, tmp_path):
    source = ImageFolder(str(image_folder), val_fraction=0.25)
    build_cache(source, tmp_path / "whole", output_size=32, shard_size=2, progress=False)
    whole = {p.name: p.read_bytes() for p in (tmp_path / "whole").iterdir() if p.name != ".lock"}
    part = tmp_path / "part"
    build_cache(source, part, output_size=32, shard_size=2, progress=False, max_shards=2)
    meta = (part / "index.json").read_bytes()
    lines = (part / "shards.jsonl").read_bytes()
    assert lines.count(b"\n") == 2 and meta == whole["index.json"]  # the meta once; one line per shard
    (part / "shards.jsonl").write_bytes(lines + lines.splitlines(keepends=True)[0][:50])  # a kill mid-append
    with pytest.raises(CacheError, match="split 'train' is incomplete"):
        ImageCache.open(part)
    build_cache(source, part, output_size=32, shard_size=2, progress=False)
    assert {p.name: p.read_bytes() for p in part.iterdir() if p.name != ".lock"} == whole  # byte for byte
    lines = (part / "shards.jsonl").read_bytes().splitlines(keepends=True)
    (part / "shards.jsonl").write_bytes(lines[0] + b"{damaged\n" + b"".join(lines[2:]))
    with pytest.raises(CacheError, match="line 2 of shards.jsonl is damaged; rerun the preprocess command"):
        ImageCache.open(part)
    build_cache(source, part, output_size=32, shard_size=2, progress=False)  # rebuilds from the damaged line on
    assert {p.name: p.read_bytes() for p in part.iterdir() if p.name != ".lock"} == whole


def test_a_cache_of_an_older_format_names_the_rebuild_command(image_folder, tmp_path):
    build_cache(ImageFolder(str(image_folder)), tmp_path / "c", output_size=32, progress=False)
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    (tmp_path / "c" / "index.json").write_text(json.dumps({**index, "version": 1}))
    with pytest.raises(CacheError, match=r"format version 1 .*rebuild it: python -m joint_colsr.preprocess .*overwrite=true"):
        ImageCache.open(tmp_path / "c")
    with pytest.raises(CacheError, match="format version 1.*overwrite=true"):
        build_cache(ImageFolder(str(image_folder)), tmp_path / "c", output_size=32, progress=False)
    build_cache(ImageFolder(str(image_folder)), tmp_path / "c", output_size=32, progress=False, overwrite=True)
    ImageCache.open(tmp_path / "c", verify="full")


_BUILD_SCRIPT = """
import sys
from joint_colsr.data import ImageFolder, build_cache
build_cache(ImageFolder(sys.argv[1], val_fraction=0.2), sys.argv[2], output_size=48, val_views=3, shard_size=3,
            num_workers=2, progress=False)
"""


@pytest.mark.slow
def test_builds_killed_at_random_points_resume_byte_identical(tmp_path):
    """SIGKILL (the build and its decoding pool) at 7 points, then the same command again:
    every file of the cache is byte for byte that of an uninterrupted build."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from PIL import Image

    from .conftest import REPO, hang_bound, random_photo

    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(60):
        Image.fromarray(random_photo(rng, 300, 400)).save(photos / f"p{i:02d}.jpg", quality=90)
    source = ImageFolder(str(photos), val_fraction=0.2)
    build_cache(source, tmp_path / "whole", output_size=48, val_views=3, shard_size=3, progress=False)
    whole = {p.name: p.read_bytes() for p in (tmp_path / "whole").iterdir() if p.name != ".lock"}
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    outcomes = []
    for kill in range(7):
        cache = tmp_path / f"killed{kill}"
        proc = subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, str(photos), str(cache)], env=env,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lines, deadline = cache / "shards.jsonl", time.monotonic() + hang_bound(120)
        # Kill once `kill` shard lines are written, a random moment later: before, during and
        # between shard writes and line appends.
        while time.monotonic() < deadline and proc.poll() is None:
            if lines.exists() and lines.read_bytes().count(b"\n") >= 2 * kill:
                time.sleep(float(rng.uniform(0, 0.05)))
                break
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        written = lines.read_bytes().count(b"\n") if lines.exists() else 0
        build_cache(source, cache, output_size=48, val_views=3, shard_size=3, progress=False)
        outcomes.append((written, {p.name: p.read_bytes() for p in cache.iterdir() if p.name != ".lock"} == whole))
    assert all(same for _, same in outcomes), outcomes
    assert len({written for written, _ in outcomes}) >= 4, outcomes  # the kills landed at different points
