import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from joint_colsr.data import (
    ColSRDataModule,
    EpochSeededSampler,
    ImageDecodeError,
    ImageFolder,
    ReferenceImages,
    SamplePhotos,
    decode_image,
    is_effectively_grayscale,
)
from joint_colsr.data.sources import ImageItem

from .conftest import random_photo


# -- decoding ---------------------------------------------------------------------------------


def test_decode_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = random_photo(rng, 40, 50)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.jpg")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    rgba = np.dstack([rgb, np.zeros((40, 50), np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "transparent.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "sixteen.png")
    assert np.array_equal(decode_image(tmp_path / "rgb.png"), rgb)
    for name in ("gray.jpg", "cmyk.jpg", "palette.png", "transparent.png", "sixteen.png"):
        out = decode_image(tmp_path / name)
        assert out.shape == (40, 50, 3) and out.dtype == np.uint8, name
    assert (decode_image(tmp_path / "transparent.png") == 255).all()  # composited on white
    sixteen = decode_image(tmp_path / "sixteen.png")[..., 0].astype(int)
    assert np.abs(sixteen - rgb[..., 0]).max() <= 1  # 16-bit rescaled, not clipped
    assert is_effectively_grayscale(decode_image(tmp_path / "gray.jpg"))
    assert not is_effectively_grayscale(rgb)


def test_decode_exif_rotation(tmp_path):
    img = Image.fromarray(random_photo(np.random.default_rng(0), 30, 60))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert decode_image(tmp_path / "rot.jpg").shape == (60, 30, 3)


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "missing"])
def test_decode_errors_name_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an image")
    elif kind == "truncated":
        Image.fromarray(random_photo(np.random.default_rng(0), 64, 64)).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert str(path) in str(info.value)


# -- sources and the split --------------------------------------------------------------------


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()


def test_samples_split_has_no_validation_leak():
    """No training sample comes from a validation photo (nor from a pixel-identical copy)."""
    source = SamplePhotos()
    train, val = source.split()
    assert {i.group for i in train}.isdisjoint({i.group for i in val})
    assert {_digest(i.array) for i in train}.isdisjoint({_digest(i.array) for i in val})
    assert {i.key for i in val} == {"chelsea", "china"}
    # Every training crop is drawn from a training photo.
    dataset = ReferenceImages(train, 64, train=True, length=50)
    for index in range(50):
        assert dataset.items[dataset.locate(index)[1]].group not in {i.group for i in val}
    # And the datamodule builds its datasets from exactly these items.
    dm = ColSRDataModule(source, batch_size=2, num_workers=0, input_size=32, output_size=64)
    dm.setup("fit")
    assert {i.key for i in dm.train_set.items}.isdisjoint({i.key for i in dm.val_set.items})


def test_samples_keeps_stereo_pair_together():
    train, val = SamplePhotos(val_photos=["motorcycle_left"]).split()
    assert {i.key for i in val} == {"motorcycle_left", "motorcycle_right"}


def test_samples_bad_names():
    with pytest.raises(ValueError, match="unknown sample photo.*choose from"):
        SamplePhotos(val_photos=["lena"])
    with pytest.raises(ValueError, match="no photo to train on"):
        SamplePhotos(val_photos=["chelsea"], photos=["chelsea"])


def test_folder_source_split_and_nesting(image_folder):
    source = ImageFolder(str(image_folder), val_fraction=0.25)
    train, val = source.split()
    assert len(train) + len(val) == 8 and train and val
    assert {i.key for i in train}.isdisjoint({i.key for i in val})
    assert any("/" in i.key for i in train + val)  # nested folders are read
    # Stable: the same split on every run (a hash of the relative path, not of the order).
    train2, val2 = ImageFolder(str(image_folder), val_fraction=0.25).split()
    assert [i.key for i in val] == [i.key for i in val2]
    everything = ImageFolder(str(image_folder), val_fraction=1.0).split()
    assert not everything[0] and len(everything[1]) == 8


def test_folder_source_skips_and_counts_bad_files(image_folder, caplog):
    (image_folder / "empty.jpg").write_bytes(b"")
    (image_folder / "notes.png").write_text("hello")
    source = ImageFolder(str(image_folder))
    assert len(source.items()) == 8
    assert len(source.skip_report) == 2
    assert "skipped 2 files" in source.skip_report.summary()


def test_folder_source_fails_when_most_files_are_bad(tmp_path):
    for i in range(3):
        (tmp_path / f"bad{i}.jpg").write_text("x")
    Image.fromarray(random_photo(np.random.default_rng(0), 20, 20)).save(tmp_path / "ok.png")
    with pytest.raises(RuntimeError, match="3 of 4 image files are unreadable"):
        ImageFolder(str(tmp_path))


def _folder_whose_validation_photo_is(root, kind: str, photos: int = 5):
    """``photos`` colour photos named ``p0.png``...; the one the split validates on (the
    lowest path hash: no hash falls under val_fraction=0.01) is made unusable: ``kind``."""
    from joint_colsr.data.sources import _stable_fraction

    rng = np.random.default_rng(0)
    names = [f"p{i}.png" for i in range(photos)]
    for name in names:
        root.mkdir(exist_ok=True)
        Image.fromarray(random_photo(rng, 60, 80)).save(root / name)
    first = min(names, key=_stable_fraction)
    assert _stable_fraction(first) > 0.01
    bad = root / first
    if kind == "too small":
        Image.fromarray(random_photo(rng, 10, 12)).save(bad)
    elif kind == "extreme aspect ratio":
        Image.fromarray(random_photo(rng, 20, 300)).save(bad)
    elif kind == "grayscale":
        Image.fromarray(random_photo(rng, 60, 80)).convert("L").save(bad)
    elif kind == "corrupt or truncated":
        bad.write_bytes(bad.read_bytes()[:200])  # the header reads, the pixels do not
    return bad


@pytest.mark.parametrize("kind", ["too small", "extreme aspect ratio", "grayscale", "corrupt or truncated"])
def test_folder_split_is_made_over_usable_photos(tmp_path, kind):
    """A folder whose validation photo is unusable validates on the next usable one (it
    crashed with "none of the 1 images could be decoded and used")."""
    bad = _folder_whose_validation_photo_is(tmp_path / "photos", kind)
    source = ImageFolder(str(tmp_path / "photos"), val_fraction=0.01)
    train, val = source.split()
    assert len(val) == 1 and len(train) == 3 and bad.name not in {i.key for i in train + val}
    assert source.skip_report.skipped[str(bad)].startswith(kind)
    dm = ColSRDataModule(source, batch_size=2, num_workers=0, input_size=16, output_size=32)
    dm.setup("fit")
    (batch,) = list(dm.val_dataloader())
    assert batch["skipped"].tolist() == [0]


def test_folder_filters_come_from_the_data_config(tmp_path, compose_cfg):
    from hydra.utils import instantiate

    _folder_whose_validation_photo_is(tmp_path / "photos", "grayscale")
    cfg = compose_cfg(["data=folder", f"data.root={tmp_path / 'photos'}", "data.min_side=50", "data.exclude_grayscale=false"])
    source = instantiate(cfg.data.source)
    assert source.filters == {"min_side": 50, "max_aspect": 10.0, "exclude_grayscale": False}
    assert len(source.items()) == 5  # the grayscale photo is kept
    with pytest.raises(RuntimeError, match=r"(?s)no usable photo.*too small \(80x60, shorter side < 70\).*data.min_side"):
        ImageFolder(str(tmp_path / "photos"), min_side=70)  # every photo is 80x60


def test_no_usable_validation_photo_fails_at_start_up_naming_files_and_fix(tmp_path):
    bad = _folder_whose_validation_photo_is(tmp_path / "photos", "grayscale", photos=2)
    with pytest.raises(RuntimeError, match=rf"(?s)no usable photo for validation.*{bad}: grayscale.*data.exclude_grayscale=false"):
        ImageFolder(str(tmp_path / "photos"), val_fraction=0.01)
    # Without the start-up decode, the dataset names the files and the fix when it finds none usable.
    source = ImageFolder(str(tmp_path / "photos"), val_fraction=0.01, decode_check_limit=0)
    _, val = source.split()
    dataset = ReferenceImages(val, 32, train=False)
    with pytest.raises(RuntimeError, match=rf"(?s)none of the 1 photos of this validation split.*{bad}: grayscale.*"
                                           r"data.exclude_grayscale=false"):
        dataset[0]


def test_folder_source_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.root=.*nope.*expected a folder holding image files"):
        ImageFolder(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="holds no image files"):
        ImageFolder(str(tmp_path))


def test_dataset_skips_a_file_that_fails_to_decode(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(random_photo(np.random.default_rng(0), 40, 40)).save(good)
    bad = tmp_path / "bad.jpg"
    Image.fromarray(random_photo(np.random.default_rng(1), 64, 64)).save(bad)
    bad.write_bytes(bad.read_bytes()[:200])  # header fine, pixels truncated
    items = [ImageItem("bad", "bad", path=str(bad)), ImageItem("good", "good", path=str(good))]
    sample = ReferenceImages(items, 32, train=False)[0]
    assert sample["skipped"] == 1 and sample["rgb"].shape == (3, 32, 32)


# -- sampling and augmentation ----------------------------------------------------------------


def test_sampler_is_a_pure_function_of_seed_and_epoch():
    a, b = EpochSeededSampler(20, True, seed=3), EpochSeededSampler(20, True, seed=3)
    a.set_epoch(2)
    list(b)  # history must not matter
    b.set_epoch(2)
    assert list(a) == list(b)
    a.set_epoch(3)
    assert [i for i, _ in a] != [i for i, _ in b]


def test_sampler_shards_ranks_disjointly():
    shards = [list(EpochSeededSampler(10, True, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    covered = {i for s in shards for i, _ in s}
    assert covered == set(range(10))


def test_augmentation_depends_only_on_sample_seed():
    item = ImageItem("x", "x", array=random_photo(np.random.default_rng(0), 100, 150))
    ds = ReferenceImages([item], 32, train=True, length=4)
    assert torch.equal(ds[(1, 123)]["rgb"], ds[(1, 123)]["rgb"])
    assert not torch.equal(ds[(1, 123)]["rgb"], ds[(1, 124)]["rgb"])


def test_validation_is_deterministic():
    dm = ColSRDataModule(SamplePhotos(), batch_size=4, num_workers=0, input_size=32, output_size=64, val_views=6)
    dm.setup("validate")
    first = [b["rgb"] for b in dm.val_dataloader()]
    second = [b["rgb"] for b in dm.val_dataloader()]
    assert len(dm.val_set) == 12
    assert all(torch.equal(x, y) for x, y in zip(first, second))


def test_datamodule_batch_on_device(image_folder):
    dm = ColSRDataModule(ImageFolder(str(image_folder)), batch_size=3, num_workers=0, input_size=24, output_size=64)
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    assert raw["rgb"].dtype == torch.uint8 and raw["rgb"].shape == (3, 3, 64, 64)
    batch = dm.on_after_batch_transfer(raw, 0)
    assert batch["l_lowres"].shape == (3, 1, 24, 24)
    assert batch["ab_target"].shape == (3, 2, 64, 64)
    assert batch["l_highres"].dtype == torch.float32


def test_datamodule_workers_give_the_same_batches_as_the_main_process():
    def batches(workers):
        dm = ColSRDataModule(SamplePhotos(), batch_size=4, num_workers=workers, input_size=32, output_size=64, train_samples_per_epoch=8)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        return [b["rgb"] for b in loader]

    assert all(torch.equal(a, b) for a, b in zip(batches(0), batches(2)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"batch_size": 0}, "data.batch_size"),
        ({"input_size": 300}, "data.input_size"),
        ({"val_views": 9}, "data.val_views"),
        ({"lowres_interpolation": "nearest"}, "data.lowres_interpolation"),
    ],
)
def test_datamodule_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ColSRDataModule(SamplePhotos(), **kwargs)


def test_training_crops_are_never_enlarged():
    """No blurred targets: a random crop keeps at least output_size source pixels per side."""
    from joint_colsr.data.views import random_resized_box

    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0, x1, y1 = random_resized_box(rng, 400, 300, (0.05, 0.3), (3 / 4, 4 / 3), min_side=256)
        assert min(x1 - x0, y1 - y0) >= 256 - 1e-6 and x1 <= 400 + 1e-6 and y1 <= 300 + 1e-6
    # Without the floor the same draws are smaller than the target (the old behaviour).
    small = [random_resized_box(rng, 400, 300, (0.05, 0.3), (3 / 4, 4 / 3)) for _ in range(50)]
    assert any(min(b[2] - b[0], b[3] - b[1]) < 256 for b in small)


def test_whole_photo_training_is_the_validation_image():
    """train_crop=whole, hflip=false (experiment=paper): every training sample is the whole
    photo squash-resized, exactly the validation/evaluation image."""
    item = ImageItem("x", "x", array=random_photo(np.random.default_rng(1), 90, 140))
    train = ReferenceImages([item], 48, train=True, length=3, train_crop="whole", hflip=False)
    val = ReferenceImages([item], 48, train=False)
    for key in ((0, 1), (1, 2), (2, 3)):
        assert torch.equal(train[key]["rgb"], val[0]["rgb"])
    with pytest.raises(ValueError, match="train_crop"):
        ReferenceImages([item], 48, train=True, train_crop="centre")
