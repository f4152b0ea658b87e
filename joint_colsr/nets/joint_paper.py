"""The seed paper's joint colorization + super-resolution encoder-decoder (Tables I and II).

Encoder (Table I): six 3x3 convolutions, filters 64, 128, 128, 256, 256, 512, strides
2, 2, 1, 2, 1, 2, padding 1, each followed by BatchNorm and LeakyReLU. A 96x96 input
becomes a 6x6x512 code.

Decoder (Table II): eight 3x3 convolutions, filters 512, 256, 128, 64, 32, 16, 8, 2,
stride 1, padding 1, each followed by BatchNorm, LeakyReLU and nearest-neighbour
upsampling.

What the paper leaves open, and what we decided (docs/architecture.md has the reasons):

* **How 6x6 becomes 256x256.** The upsampling after decoder conv ``i`` (i = 1..7) goes to
  ``min(2 * previous, target)``, and the one after conv 7 lands exactly on the target.
  For 96 -> 256: 6 -> 12 -> 24 -> 48 -> 96 -> 192 -> 256 (x4/3) -> 256, so convs 7 and 8
  run at 256x256. This costs 2.64 GFLOP per image forward (1.32 G multiply-adds), the
  figure the speed issue budgets for. Upsampling is computed from the input's size at
  run time, so the network is fully convolutional with scale ``output_size / input_size``.
* **The output layer.** Conv 8 produces a*b*; BatchNorm and LeakyReLU there would pin
  the colour statistics of each batch and clip negative colours, so conv 8 is followed
  only by the output activation (``tanh`` by default: a*b* are normalized to /110,
  inside (-1, 1); ``none`` for a linear head).
* **Initialization**: the output conv starts at zero, so an untrained network predicts
  gray (a* = b* = 0), the baseline every colorizer must beat.
* **LeakyReLU slope**: 0.2 (pix2pix-style encoder-decoders); configurable.
* **Any magnification** (``upsampler="implicit"``, not in the paper): decoder convs 1-5
  bring the code back to the *input* resolution (6 -> 12 -> 24 -> 48 -> 96, 32 channels),
  and a continuous upsampler (:class:`~joint_colsr.nets.implicit.ImplicitUpsampler`)
  replaces convs 6-8, queried at whatever output size the call asks for.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from joint_colsr.nets.blocks import ConvBNAct, make_output_activation, scaled_width
from joint_colsr.nets.implicit import ImplicitUpsampler, check_upsampler, output_hw_for

#: Decoder convs (of Table II) that run before an implicit upsampler: they reach the input resolution.
IMPLICIT_DECODER_CONVS = 5

#: Table I: (filters, stride) of each encoder convolution; kernel 3, padding 1.
ENCODER_TABLE: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2))
#: Table II: filters of each decoder convolution; kernel 3, stride 1, padding 1.
DECODER_TABLE: tuple[int, ...] = (512, 256, 128, 64, 32, 16, 8, 2)


def encoded_size(size: int) -> int:
    """Spatial size after the encoder (four stride-2 convs with padding 1: 96 -> 6)."""
    for _, stride in ENCODER_TABLE:
        size = (size + 2 - 3) // stride + 1
    return size


def decoder_upsample_sizes(start: int, target: int, steps: int = len(DECODER_TABLE) - 1) -> list[int]:
    """Sizes after each decoder upsampling: doubling, capped at ``target``, last one = target."""
    if start < 1 or target < 1:
        raise ValueError(f"sizes must be positive, got start={start}, target={target}")
    sizes, size = [], start
    for _ in range(steps - 1):
        size = min(2 * size, target) if size < target else size
        sizes.append(size)
    sizes.append(target)
    return sizes


class _UpsampleTo(nn.Module):
    """Nearest (or bilinear) resize to a size chosen per call; identity when already there."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"upsample_mode must be 'nearest' or 'bilinear', got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        if self.mode == "nearest":
            # 'nearest-exact' samples pixel centres: symmetric, unlike legacy 'nearest'.
            return F.interpolate(x, size=size, mode="nearest-exact")
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class JointPaperNet(nn.Module):
    """Encoder-decoder that maps low-resolution L* to high-resolution a*b*.

    Args:
        input_size: side of the square input the network is built for (96 in the paper).
        output_size: side of the a*b* output (256 in the paper). The scale factor
            ``output_size / input_size`` is kept for inputs of other sizes.
        width_mult: multiplies every filter count of Tables I/II except the 2 outputs
            (1.0 is the paper; tests use small values).
        negative_slope: LeakyReLU slope.
        output_activation: ``"tanh"`` or ``"none"``.
        upsample_mode: ``"nearest"`` (the paper) or ``"bilinear"``.
        in_channels: input channels (1: L*).
        out_channels: output channels (2: a*b*).
        upsampler: ``"fixed"`` (Table II's decoder, one magnification) or ``"implicit"``
            (any output size; see the module docs).
        implicit_hidden: hidden width of the implicit upsampler's MLP (times ``width_mult``).
        implicit_layers: hidden layers of that MLP.

    Shapes:
        ``(B, in_channels, r, r) -> (B, out_channels, round(r * s), round(r * s))`` with
        ``s = output_size / input_size``; non-square inputs scale each side alike. With
        ``upsampler="implicit"``, ``forward(x, out_hw=(H, W))`` returns ``(B, out_channels, H, W)``
        for any ``H, W >= 1`` (:attr:`any_scale`).
    """

    def __init__(
        self,
        input_size: int = 96,
        output_size: int = 256,
        width_mult: float = 1.0,
        negative_slope: float = 0.2,
        output_activation: str = "tanh",
        upsample_mode: str = "nearest",
        in_channels: int = 1,
        out_channels: int = 2,
        upsampler: str = "fixed",
        implicit_hidden: int = 64,
        implicit_layers: int = 2,
    ) -> None:
        super().__init__()
        self.upsampler = check_upsampler(upsampler)
        #: Whether ``forward`` takes ``out_hw`` (any output size).
        self.any_scale = upsampler == "implicit"
        if input_size < 16:
            raise ValueError(f"input_size must be >= 16 (the encoder divides by 16), got {input_size}")
        if output_size < input_size:
            raise ValueError(f"output_size ({output_size}) must be >= input_size ({input_size})")
        self.input_size = int(input_size)
        self.output_size = int(output_size)
        self.scale = self.output_size / self.input_size
        enc_widths = [scaled_width(f, width_mult) for f, _ in ENCODER_TABLE]
        dec_widths = [scaled_width(f, width_mult) for f in DECODER_TABLE[:-1]] + [out_channels]

        layers, prev = [], in_channels
        for width, (_, stride) in zip(enc_widths, ENCODER_TABLE):
            layers.append(ConvBNAct(prev, width, stride=stride, negative_slope=negative_slope))
            prev = width
        self.encoder = nn.Sequential(*layers)

        self.decoder = nn.ModuleList()
        for width in dec_widths[: IMPLICIT_DECODER_CONVS if self.any_scale else -1]:
            self.decoder.append(ConvBNAct(prev, width, negative_slope=negative_slope))
            prev = width
        self.upsample = _UpsampleTo(upsample_mode)
        if self.any_scale:
            self.implicit = ImplicitUpsampler(prev, out_channels, hidden=scaled_width(implicit_hidden, width_mult),
                                              layers=implicit_layers, negative_slope=negative_slope)
        else:
            self.head = nn.Conv2d(prev, out_channels, kernel_size=3, stride=1, padding=1)
            # Start from the gray prediction (a* = b* = 0): a random head paints random colours,
            # far worse than gray, and wastes the first epochs undoing them.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.head_activation = make_output_activation(output_activation)

    def output_hw(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        """Output ``(H, W)`` for an input of ``in_hw``."""
        return tuple(int(round(s * self.scale)) for s in in_hw)  # type: ignore[return-value]

    def forward(self, l_lowres: Tensor, out_hw: tuple[int, int] | None = None) -> Tensor:
        """``(B, 1, r, r)`` normalized L* -> ``(B, 2, S, S)`` normalized a*b* (``out_hw``: implicit only)."""
        if l_lowres.dim() != 4:
            raise ValueError(f"expected (B, C, H, W) input, got shape {tuple(l_lowres.shape)}")
        if self.any_scale:
            return self._forward_implicit(l_lowres, out_hw)
        if out_hw is not None and tuple(out_hw) != self.output_hw(tuple(l_lowres.shape[-2:])):
            raise ValueError(f"this JointPaperNet is fixed-scale (x{self.scale:.4g}): it cannot produce {tuple(out_hw)} "
                             f"from {tuple(l_lowres.shape[-2:])}; train one with model.net.upsampler=implicit for any size")
        out_h, out_w = self.output_hw(tuple(l_lowres.shape[-2:]))
        x = self.encoder(l_lowres)
        sizes = list(zip(decoder_upsample_sizes(x.shape[-2], out_h), decoder_upsample_sizes(x.shape[-1], out_w)))
        for layer, size in zip(self.decoder, sizes):
            x = self.upsample(layer(x), size)
        return self.head_activation(self.head(x))

    def _forward_implicit(self, l_lowres: Tensor, out_hw: tuple[int, int] | None) -> Tensor:
        in_h, in_w = l_lowres.shape[-2:]
        out_hw = output_hw_for((in_h, in_w), None, out_hw, self.scale)
        x = self.encoder(l_lowres)
        steps = len(self.decoder)
        sizes = list(zip(decoder_upsample_sizes(x.shape[-2], in_h, steps), decoder_upsample_sizes(x.shape[-1], in_w, steps)))
        for layer, size in zip(self.decoder, sizes):
            x = self.upsample(layer(x), size)
        return self.head_activation(self.implicit(x, out_hw))


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["DECODER_TABLE", "ENCODER_TABLE", "JointPaperNet", "count_parameters", "decoder_upsample_sizes", "encoded_size"]
