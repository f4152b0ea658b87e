"""predict: tiled inference on any size (seamless, bounded tiles), reference mode = the eval protocol."""

import os
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from joint_colsr.color import rgb_uint8_to_lab_batch
from joint_colsr.data.views import resize_box
from joint_colsr.metrics import psnr_uint8, rgb_from_prediction
from joint_colsr.nets import JointPaperNet
from joint_colsr.predict import TiledColorizer, predict
from joint_colsr.systems import ColSRSystem

from .conftest import random_photo


class PointwiseNet(nn.Module):
    """A net whose every output pixel depends on one input pixel (nearest upsampling + 1x1
    convs): tiling cannot change its output, so any difference is the tiler's fault."""

    def __init__(self, scale: Fraction) -> None:
        super().__init__()
        self.scale = scale
        self.ab = nn.Conv2d(1, 2, 1)
        self.l = nn.Conv2d(1, 1, 1)
        nn.init.normal_(self.ab.weight, std=0.5)

    def forward(self, l_lowres):
        h, w = l_lowres.shape[-2:]
        up = F.interpolate(l_lowres, size=(int(h * self.scale), int(w * self.scale)), mode="nearest-exact")
        return {"ab": torch.tanh(self.ab(up)) * 0.5, "l": (0.9 * up + 0.05).clamp(-1, 1)}


@pytest.mark.parametrize("scale", [Fraction(8, 3), Fraction(2, 1)])
def test_tiles_blend_without_seams(scale):
    torch.manual_seed(0)
    net = PointwiseNet(scale).eval()
    rng = np.random.default_rng(0)
    l_star = torch.from_numpy(rng.uniform(0, 100, size=(101, 77)).astype(np.float32))
    whole = TiledColorizer(net, scale, tile_size=512, tile_overlap=0)(l_star)
    tiled = TiledColorizer(net, scale, tile_size=24, tile_overlap=6)(l_star)
    assert whole.shape == (round(101 * scale), round(77 * scale), 3)
    assert tiled.shape == whole.shape
    # Blending weights sum to one everywhere: at most one 8-bit step from float rounding.
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1


def test_large_image_runs_in_bounded_tiles():
    torch.manual_seed(0)
    net = JointPaperNet(input_size=96, output_size=256, width_mult=0.0625).eval()
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    rng = np.random.default_rng(1)
    l_star = torch.from_numpy(rng.uniform(0, 100, size=(300, 451)).astype(np.float32))
    tiler = TiledColorizer(net, Fraction(256, 96), tile_size=96, tile_overlap=24)
    out = tiler(l_star)
    assert out.shape == (800, round(451 * 8 / 3), 3) and out.dtype == np.uint8
    assert max(max(s) for s in seen) <= 96 and len(seen) > 10
    # The untrained net predicts gray: the output is the upscaled L*, so R = G = B everywhere.
    assert np.abs(out[..., 0].astype(int) - out[..., 2].astype(int)).max() <= 1


def test_predict_photo_and_reference_modes(tiny_ckpt, tmp_path):
    from .conftest import compose_config

    rng = np.random.default_rng(2)
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    colour = random_photo(rng, 70, 110)
    Image.fromarray(colour).save(inputs / "colour.jpg", quality=95)
    Image.fromarray(colour).convert("L").save(inputs / "sub" / "gray.png")
    (inputs / "broken.png").write_bytes(b"not an image")

    photo_out = tmp_path / "photo"
    cfg = compose_config("predict", [f"ckpt_path={tiny_ckpt}", f"input_dir={inputs}", f"output_dir={photo_out}",
                                     "tile_size=48", "tile_overlap=12", "device=cpu"], output_dir=tmp_path / "run1")
    old_umask = os.umask(0o002)  # a group-shared output folder: the group can read what predict writes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # our code raises no warnings of its own (issue 25)
            result = predict(cfg)
    finally:
        os.umask(old_umask)
    assert result["written"] == 2 and len(result["skipped"]) == 1
    assert (photo_out / "colour.png").stat().st_mode & 0o777 == 0o664
    colour_png = np.asarray(Image.open(photo_out / "colour.png"))
    gray_png = np.asarray(Image.open(photo_out / "sub" / "gray.png"))
    assert colour_png.shape == gray_png.shape == (round(70 * 8 / 3), round(110 * 8 / 3), 3)

    ref_out = tmp_path / "reference"
    cfg = compose_config("predict", [f"ckpt_path={tiny_ckpt}", f"input_dir={inputs}", f"output_dir={ref_out}",
                                     "mode=reference", "device=cpu"], output_dir=tmp_path / "run2")
    predict(cfg)
    ref_png = np.asarray(Image.open(ref_out / "colour.png"))
    assert ref_png.shape == (256, 256, 3)
    # Reference mode keeps the ground-truth L*: its L* equals that of the resized photo.
    decoded = np.asarray(Image.open(inputs / "colour.jpg").convert("RGB"))
    reference = resize_box(decoded, (0, 0, 110, 70), 256)
    lab_pred = rgb_uint8_to_lab_batch(torch.from_numpy(ref_png.transpose(2, 0, 1).copy())[None], 96)
    lab_ref = rgb_uint8_to_lab_batch(torch.from_numpy(reference.transpose(2, 0, 1).copy())[None], 96)
    assert (lab_pred["l_highres"] - lab_ref["l_highres"]).abs().mean() < 0.01
    # ... and its a*b* are the checkpoint's prediction on the downscaled L*, as eval computes them.
    system = ColSRSystem.load_from_checkpoint(tiny_ckpt, map_location="cpu").eval()
    with torch.no_grad():
        expected = rgb_from_prediction(lab_ref["l_highres"], system.infer(lab_ref)["ab"])
    assert psnr_uint8(torch.from_numpy(ref_png.transpose(2, 0, 1).copy())[None], expected).item() > 50


def test_predict_rejects_bad_config(tmp_path):
    from joint_colsr.run.config_checks import ConfigError

    from .conftest import compose_config

    (tmp_path / "in").mkdir()
    cfg = compose_config("predict", ["baseline=bicubic", f"input_dir={tmp_path / 'in'}", f"output_dir={tmp_path / 'o'}", "mode=sideways"],
                         output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="mode must be one of photo, reference"):
        predict(cfg)
    cfg = compose_config("predict", ["baseline=bicubic", f"input_dir={tmp_path / 'in'}", f"output_dir={tmp_path / 'o'}"],
                         output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="holds no image files"):
        predict(cfg)


def test_predict_never_writes_over_an_input_or_another_output(tmp_path):
    from joint_colsr.run.config_checks import ConfigError

    from .conftest import compose_config

    rng = np.random.default_rng(3)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "a.jpg", "a.JPEG"):
        Image.fromarray(random_photo(rng, 40, 40)).save(inputs / name, format="PNG" if name.endswith("png") else "JPEG")
    original = (inputs / "a.png").read_bytes()

    def run(out, *extra: str) -> dict:
        cfg = compose_config("predict", ["baseline=bicubic", f"input_dir={inputs}", f"output_dir={out}", "device=cpu", *extra],
                             output_dir=tmp_path / "run")
        return predict(cfg)

    for out in (inputs, inputs / "colorized"):
        with pytest.raises(ConfigError, match="overwrite=true"):
            run(out)
    assert (inputs / "a.png").read_bytes() == original
    result = run(tmp_path / "out")
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert result["written"] == 3 and written == ["a.JPEG.png", "a.jpg.png", "a.png.png"]
