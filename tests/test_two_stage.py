"""The paper's cascade: two separately trained stages composed frozen (python -m joint_colsr.two_stage)."""

from __future__ import annotations

import pytest
import torch

from joint_colsr.color import resize_bicubic
from joint_colsr.systems import ColSRSystem
from joint_colsr.train import train
from joint_colsr.run.config_checks import ConfigError
from joint_colsr.two_stage import colorizer_stage_overrides, compose

from .conftest import compose_config


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    out = tmp_path_factory.mktemp("stages")
    common = ["debug=tiny", "logger=none", "model.net.width_mult=0.0625"]
    colorizers = {}
    for order in ("colorize_first", "upscale_first"):  # each at the scale it runs at in the cascade
        at_scale = colorizer_stage_overrides(order, 96, 256)
        train(compose_config("train", ["model=ic_only", *common, *at_scale], output_dir=out / order))
        colorizers[order] = out / order / "checkpoints" / "last.ckpt"
    train(compose_config("train", ["model=sr_only", "model.net.blocks=1", *common], output_dir=out / "upscaler"))
    return colorizers, out / "upscaler" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("order", ["colorize_first", "upscale_first"])
def test_composed_cascade_is_exactly_its_two_trained_stages(stages, order, tmp_path):
    colorizers, upscaler_ckpt = stages
    colorizer_ckpt = colorizers[order]
    path = compose(order, colorizer_ckpt, upscaler_ckpt, tmp_path / "c" / "last.ckpt")
    colorizer_ckpt.rename(colorizer_ckpt.with_suffix(".moved"))  # the composed checkpoint stands alone
    try:
        cascade = ColSRSystem.load_from_checkpoint(path, map_location="cpu").eval()
    finally:
        colorizer_ckpt.with_suffix(".moved").rename(colorizer_ckpt)
    colorizer = ColSRSystem.load_from_checkpoint(colorizer_ckpt, map_location="cpu").eval().net
    upscaler = ColSRSystem.load_from_checkpoint(upscaler_ckpt, map_location="cpu").eval().net
    net = cascade.net
    assert net.training_kind == "two-stage" and not any(p.requires_grad for p in net.parameters())
    x = torch.rand(2, 1, 96, 96) * 2 - 1
    with torch.no_grad():
        out = net(x)
        l_high = upscaler(x)["l"]
        assert torch.allclose(out["l"], l_high, atol=1e-6)  # the sr_only stage, unchanged
        if order == "colorize_first":  # colorize at 96, a*b* upscaled bicubically
            colorizer.scale = 1.0
            expected = resize_bicubic(colorizer(x), (256, 256))
        else:  # colorize the super-resolved L*
            colorizer.scale = 1.0
            expected = colorizer(l_high)
        assert torch.allclose(out["ab"], expected, atol=1e-5)


def test_upscale_first_refuses_a_colorizer_trained_at_the_input_size(stages, tmp_path):
    colorizers, upscaler_ckpt = stages
    assert colorizer_stage_overrides("upscale_first", 96, 256) == ["data.input_size=256", "++model.net.global_input_size=96"]
    with pytest.raises(ConfigError, match="order=upscale_first needs a colorizer trained with .'input_size': 256"):
        compose("upscale_first", colorizers["colorize_first"], upscaler_ckpt, tmp_path / "c" / "last.ckpt")
