"""Every kind of file people really have, in one nested folder: converted correctly or skipped and counted."""

import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from joint_colsr.data import ColSRDataModule, ImageDecodeError, ImageFolder, decode_image
from joint_colsr.data.decode import unusable_reason

from .conftest import random_photo

#: file -> what must happen: "ok" (decoded to the right pixels), or the reason it is skipped.
EXPECTED = {
    "plain.jpg": "ok",
    "nested/deeper/still/plain.png": "ok",
    "cmyk.jpg": "ok",
    "rgba.png": "ok",
    "la.png": "grayscale",
    "palette.png": "ok",
    "palette_transparent.png": "ok",
    "sixteen_bit.png": "grayscale",
    "exif_rotated.jpg": "ok",
    "png_named.jpg": "ok",
    "animated.gif": "ok",
    "smaller_than_target.png": "ok",
    "gray.jpg": "grayscale",
    "gray_stored_as_rgb.jpg": "grayscale",
    "tiny.png": "too small",
    "banner.jpg": "extreme aspect ratio",
    "truncated.jpg": "corrupt or truncated",
    "garbage_after_header.jpg": "corrupt or truncated",
    "empty.jpg": "empty file",
    "text.png": "not an image",
}


@pytest.fixture
def bad_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "mixed"
    (root / "nested" / "deeper" / "still").mkdir(parents=True)
    rgb = random_photo(rng, 90, 120)
    Image.fromarray(rgb).save(root / "plain.jpg", quality=95)
    Image.fromarray(rgb).save(root / "nested/deeper/still/plain.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    alpha = np.full((90, 120), 255, np.uint8)
    alpha[:10] = 0  # a transparent band: must come out white, not black
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(root / "rgba.png")
    Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA").save(root / "la.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(root / "palette_transparent.png", transparency=0)
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(root / "sixteen_bit.png")
    marked = rgb.copy()
    marked[:30, :40] = (255, 0, 0)  # a red top-left corner as stored
    img = Image.fromarray(marked)
    exif = img.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    img.save(root / "exif_rotated.jpg", exif=exif, quality=95)
    Image.fromarray(rgb).save(root / "png_named.jpg", format="PNG")
    frames = [Image.fromarray(np.roll(rgb, k, axis=1)).convert("P") for k in (0, 30)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(random_photo(rng, 40, 30)).save(root / "smaller_than_target.png")
    Image.fromarray(rgb).convert("L").save(root / "gray.jpg")
    gray3 = np.repeat(rgb[..., :1], 3, axis=2)
    Image.fromarray(gray3).save(root / "gray_stored_as_rgb.jpg", quality=90)
    Image.fromarray(random_photo(rng, 10, 12)).save(root / "tiny.png")
    Image.fromarray(random_photo(rng, 20, 600)).save(root / "banner.jpg")
    Image.fromarray(random_photo(rng, 200, 200)).save(root / "truncated.jpg", quality=95)
    (root / "truncated.jpg").write_bytes((root / "truncated.jpg").read_bytes()[:1500])
    good = (root / "plain.jpg").read_bytes()
    (root / "garbage_after_header.jpg").write_bytes(good[:700] + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("this is not an image\n")
    return root, rgb


def _outcome(path) -> str:
    try:
        rgb = decode_image(path)
    except ImageDecodeError as err:
        return err.reason
    return unusable_reason(rgb, min_side=16, max_aspect=10.0) or "ok"


def test_every_kind_is_converted_or_skipped_with_its_reason(bad_folder):
    root, rgb = bad_folder
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == sorted(EXPECTED)
    for name, expected in EXPECTED.items():
        assert _outcome(root / name).startswith(expected), (name, _outcome(root / name))


def test_conversions_keep_what_the_pixels_mean(bad_folder):
    root, rgb = bad_folder
    close = lambda a, b, tol: np.abs(a.astype(int) - b.astype(int)).mean() < tol  # noqa: E731
    assert close(decode_image(root / "cmyk.jpg"), rgb, 6)  # not inverted, not a naive colour cast
    rgba = decode_image(root / "rgba.png")
    assert (rgba[:10] == 255).all() and np.array_equal(rgba[10:], rgb[10:])  # transparency -> white
    assert close(decode_image(root / "palette.png"), rgb, 12)
    sixteen = decode_image(root / "sixteen_bit.png")
    assert np.abs(sixteen[..., 0].astype(int) - rgb[..., 1]).max() <= 1  # rescaled, not clipped to 255
    rotated = decode_image(root / "exif_rotated.jpg")
    assert rotated.shape == (120, 90, 3)
    assert rotated[:40, -30:, 0].mean() > 200 and rotated[:40, -30:, 1].mean() < 60  # red corner now top-right
    assert np.array_equal(decode_image(root / "png_named.jpg"), rgb)
    assert np.array_equal(decode_image(root / "animated.gif"), np.asarray(Image.open(root / "animated.gif").convert("RGB")))


def test_a_whole_epoch_over_the_folder_never_crashes_and_counts_skips(bad_folder, caplog):
    root, _ = bad_folder
    with caplog.at_level(logging.WARNING):
        source = ImageFolder(str(root), val_fraction=0.3)
    # Header failures and the size filters are applied at start-up, before the split, and
    # reported ("skipped N files" with reasons); so are the validation photos a decode
    # check found unusable (a small validation side is decoded at start-up).
    skipped = {p.relative_to(root).as_posix(): r for p, r in ((Path(p), r) for p, r in source.skip_report.skipped.items())}
    by_header = {name for name, reason in skipped.items() if not reason.startswith(("grayscale", "corrupt"))}
    assert by_header == {"empty.jpg", "text.png", "tiny.png", "banner.jpg"}
    assert all(EXPECTED[name].startswith(("grayscale", "corrupt")) for name in set(skipped) - by_header)
    assert f"skipped {len(skipped)} files" in caplog.text
    _, val = source.split()
    assert val and all(EXPECTED[item.key] == "ok" for item in val)
    dm = ColSRDataModule(source, batch_size=1, num_workers=2, input_size=16, output_size=48, seed=0)
    dm.setup("fit")
    skipped, seen = 0, 0
    with caplog.at_level(logging.WARNING):
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            for batch in loader:
                assert batch["rgb"].dtype == torch.uint8 and batch["rgb"].shape[1:] == (3, 48, 48)
                for img in batch["rgb"]:  # no grayscale photo became a reference image
                    chans = img.to(torch.int16)
                    assert (chans[0] - chans[1]).abs().max() > 2 or (chans[1] - chans[2]).abs().max() > 2
                skipped += int(batch["skipped"].sum())
                seen += len(batch["rgb"])
    usable = sum(v == "ok" for v in EXPECTED.values())
    assert seen == len(dm.train_set) + len(dm.val_set) and skipped >= len(source.items()) - usable


def test_too_many_bad_files_stop_at_start_up_with_the_list(bad_folder):
    root, _ = bad_folder
    with pytest.raises(RuntimeError, match=r"(?s)2 of 20 image files are unreadable.*empty\.jpg.*text\.png"):
        ImageFolder(str(root), max_bad_fraction=0.05)


def test_decompression_bomb_is_skipped_not_decoded(bad_folder, monkeypatch):
    root, _ = bad_folder
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own guard, set low: 90x120 counts as a bomb
    assert _outcome(root / "plain.jpg").startswith("too large")


def test_training_logs_the_epochs_skip_count(bad_folder, compose_cfg):
    import csv

    from joint_colsr.assembly import build_datamodule
    from joint_colsr.train import train

    root, _ = bad_folder
    overrides = ["data=folder", f"data.root={root}", "debug=tiny", "data.train_samples_per_epoch=null", "data.batch_size=2",
                 "trainer.limit_train_batches=null", "data.source.val_fraction=0.3", "callbacks.model_summary.max_depth=1"]
    cfg = compose_cfg(overrides)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    expected = sum(int(batch["skipped"].sum()) for batch in dm.train_dataloader())  # epoch 0, same seed
    assert expected > 0  # the folder has unusable photos in its training split
    train(cfg)
    with open(f"{cfg.paths.output_dir}/csv/metrics.csv") as f:
        logged = [float(row["data/skipped"]) for row in csv.DictReader(f) if row.get("data/skipped")]
    assert logged == [expected]  # once per epoch, the whole epoch's count


# -- embedded colour profiles ------------------------------------------------------------------


def _s15(x):
    return struct.pack(">i", int(round(x * 65536)))


def rgb_matrix_icc(description, red, green, blue, gamma):
    """An ICC v2 display profile (matrix + gamma curves), written byte by byte from the spec."""
    xyz = lambda x, y, z: b"XYZ " + b"\0" * 4 + _s15(x) + _s15(y) + _s15(z)  # noqa: E731
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, int(round(gamma * 256)))
    text = description.encode("ascii") + b"\0"
    tags = [(b"desc", b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 78),
            (b"cprt", b"text" + b"\0" * 4 + b"none\0"), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(*red)), (b"gXYZ", xyz(*green)), (b"bXYZ", xyz(*blue)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        data += b"\0" * (-(offset + len(data)) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    body = struct.pack(">I", len(tags)) + table + data
    header = (struct.pack(">II", 128 + len(body), 0) + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acsp" + b"\0" * 28 + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    return header + body


#: Adobe RGB (1998): D50-adapted primaries and its 563/256 gamma, as in Adobe's own profile.
ADOBE_RED, ADOBE_GREEN, ADOBE_BLUE, ADOBE_GAMMA = (0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446), 563 / 256


def adobe_rgb_to_srgb(rgb):
    """The textbook conversion in numpy: Adobe RGB -> linear -> XYZ (D50) -> linear sRGB -> sRGB."""
    to_xyz = np.array([ADOBE_RED, ADOBE_GREEN, ADOBE_BLUE]).T
    srgb_to_xyz = np.array([(0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)]).T
    linear = np.clip((rgb / 255.0) ** ADOBE_GAMMA @ to_xyz.T @ np.linalg.inv(srgb_to_xyz).T, 0, 1)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055) * 255


def test_embedded_adobe_rgb_profile_is_converted_to_srgb(tmp_path):
    rgb = random_photo(np.random.default_rng(1), 40, 50)
    icc = rgb_matrix_icc("Adobe RGB (1998), test copy", ADOBE_RED, ADOBE_GREEN, ADOBE_BLUE, ADOBE_GAMMA)
    Image.fromarray(rgb).save(tmp_path / "adobe.png", icc_profile=icc)
    decoded = decode_image(tmp_path / "adobe.png")
    expected = adobe_rgb_to_srgb(rgb.astype(np.float64))
    assert np.abs(decoded - expected).max() <= 2.0  # LittleCMS agrees with the textbook maths
    assert np.abs(decoded.astype(int) - rgb).mean() > 3  # and the stored pixels were not taken as sRGB
    # Transparency is still composited on white, after the colour conversion.
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:5] = 0
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "adobe_rgba.png", icc_profile=icc)
    rgba = decode_image(tmp_path / "adobe_rgba.png")
    assert (rgba[:5] == 255).all() and np.abs(rgba[5:] - expected[5:]).max() <= 2.0


def test_srgb_and_broken_profiles_keep_the_stored_pixels(tmp_path):
    rgb = random_photo(np.random.default_rng(2), 40, 50)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rgb).save(tmp_path / "srgb.png", icc_profile=srgb)
    Image.fromarray(rgb).save(tmp_path / "broken.png", icc_profile=b"not an ICC profile at all")
    assert np.array_equal(decode_image(tmp_path / "srgb.png"), rgb)
    assert np.array_equal(decode_image(tmp_path / "broken.png"), rgb)


def test_the_embedded_sample_photo_tagged_adobe_rgb_is_converted():
    # skimage's rocket.jpg carries an Adobe RGB (1998) profile; the samples source decodes
    # it like any file, so make train sees its real colours, not the stored values.
    import skimage.data

    from joint_colsr.data import SamplePhotos

    rocket = SamplePhotos(photos=["rocket", "chelsea"], val_photos=["chelsea"]).items()[0].array
    stored = skimage.data.rocket()
    assert rocket.shape == stored.shape and np.abs(rocket.astype(int) - stored).mean() > 2
    spread = lambda a: (a.max(-1).astype(int) - a.min(-1)).mean()  # noqa: E731  colourfulness proxy
    assert spread(rocket) > spread(stored)  # Adobe RGB values read as sRGB look washed out


def test_broken_file_links_are_reported_not_lost(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        Image.fromarray(random_photo(rng, 64, 80)).save(root / f"p{i}.png")
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (root / "loop.png").symlink_to("loop.png")
    (root / "fine.png").symlink_to(root / "p0.png")  # a working link is a photo like any other
    source = ImageFolder(str(root))
    assert len(source.items()) == 4
    report = dict(source.skip_report.skipped)
    assert report == {str(root / "dangling.png"): f"broken symbolic link (-> {tmp_path / 'nowhere.png'})",
                      str(root / "loop.png"): "broken symbolic link (-> loop.png)"}
