"""Small building blocks shared by the networks (plain PyTorch, no Lightning)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from joint_colsr.color import resize_bicubic


def scaled_width(channels: int, width_mult: float, minimum: int = 1) -> int:
    """``channels * width_mult`` rounded, at least ``minimum``: how tests build tiny nets."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    return max(minimum, int(round(channels * width_mult)))


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias: BatchNorm follows) -> BatchNorm2d -> LeakyReLU.

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(negative_slope, inplace=True),
        )


def make_output_activation(name: str) -> nn.Module:
    """The activation of a network's a*b* head: ``tanh`` (bounded, default) or ``none``."""
    if name == "tanh":
        return nn.Tanh()
    if name in ("none", "identity", None):
        return nn.Identity()
    raise ValueError(f"output_activation must be 'tanh' or 'none', got {name!r}")


#: Interpolation modes every configurable resize in the networks accepts.
RESIZE_MODES = ("bicubic", "bilinear", "nearest", "area")


def scaled_hw(in_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(H, W)`` times ``scale``, rounded: the output size of a fully convolutional net."""
    return int(round(in_hw[0] * scale)), int(round(in_hw[1] * scale))


def check_sizes(input_size: int, output_size: int, minimum: int = 1) -> None:
    """Constructor check shared by the networks: ``minimum <= input_size <= output_size``."""
    if input_size < minimum:
        raise ValueError(f"input_size must be >= {minimum}, got {input_size}")
    if output_size < input_size:
        raise ValueError(f"output_size ({output_size}) must be >= input_size ({input_size})")


def check_image(x: Tensor, channels: int, name: str = "input") -> None:
    """Forward check: ``x`` must be ``(B, channels, H, W)``."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must be (B, {channels}, H, W), got shape {tuple(x.shape)}")


def resize(x: Tensor, size: tuple[int, int], mode: str = "bicubic") -> Tensor:
    """Resize ``(B, C, H, W)`` to ``size``; identity when already there.

    ``mode``: ``bicubic`` | ``bilinear`` | ``nearest`` | ``area``. ``bicubic`` is the suite's
    one bicubic (:func:`joint_colsr.color.resize_bicubic`: PIL's kernel, both directions);
    downscaling with bilinear is antialiased (as PIL does), so a resize from 384 to 256
    does not alias.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "bicubic":
        return resize_bicubic(x, size)
    if mode == "bilinear":
        down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=down)
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    raise ValueError(f"resize mode must be bicubic, bilinear, nearest or area, got {mode!r}")


def check_resize_mode(mode: str, key: str) -> str:
    """Validate a resize mode at construction time (``key`` names the argument in the error)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"{key} must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    return mode


def pixel_shuffle_factors(scale: float) -> tuple[list[int], bool]:
    """How to reach ``scale`` with pixel-shuffle stages.

    Integer scales whose prime factors are 2 and 3 use exactly those stages (x4 -> [2, 2],
    x3 -> [3], x6 -> [2, 3]). Any other scale goes by x2 stages to the next power of two
    at or above it and needs a final resize (x8/3, i.e. 96 -> 256: [2, 2] = x4, 384, then
    resized to 256).

    Returns:
        ``(factors, needs_resize)``; ``([], True)`` for scales <= 1 other than exactly 1.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if abs(scale - round(scale)) < 1e-9 and round(scale) >= 1:
        rest, factors = int(round(scale)), []
        for p in (2, 3):
            while rest % p == 0:
                factors.append(p)
                rest //= p
        if rest == 1:
            return factors, False
    factors, reached = [], 1
    while reached < scale:
        factors.append(2)
        reached *= 2
    return factors, True


class ResidualBlock(nn.Module):
    """SRResNet's residual block: conv-BN-PReLU-conv-BN, plus the input.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. ``batch_norm=False`` drops both BN layers
    (EDSR's finding for SR); the convs then carry a bias.
    """

    def __init__(self, channels: int, batch_norm: bool = True) -> None:
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(channels)) if batch_norm else nn.Identity
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm),
            norm(),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm),
            norm(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class PixelShuffleUpsampler(nn.Sequential):
    """Sub-pixel upsampling (Shi et al. 2016, as in SRResNet): per factor f, conv to
    ``out_channels * f^2`` channels, PixelShuffle(f), PReLU.

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, H * prod(factors), W * prod(factors))``.
    """

    def __init__(self, in_channels: int, out_channels: int, factors: list[int]) -> None:
        layers: list[nn.Module] = []
        prev = in_channels
        for f in factors:
            layers += [nn.Conv2d(prev, out_channels * f * f, 3, padding=1), nn.PixelShuffle(f), nn.PReLU(out_channels)]
            prev = out_channels
        super().__init__(*layers)
