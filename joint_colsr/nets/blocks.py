"""Small building blocks shared by the networks (plain PyTorch, no Lightning)."""

from __future__ import annotations

from torch import nn


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
