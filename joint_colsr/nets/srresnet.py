"""SRResNet (Ledig et al. 2017), and ``sr_only``: super-resolution of L* without colour.

SRResNet: 9x9 conv + PReLU head; N residual blocks (conv-BN-PReLU-conv-BN with a skip;
N = 16, width 64 by default); conv + BN; a global skip from the head; sub-pixel
(pixel-shuffle) upsampling; a 9x9 output conv.

Scales. Integer scales whose factors are 2 and 3 use pixel-shuffle stages of exactly those
factors (x2, x3, x4, x6, x8, ...). Any other scale, such as the joint task's 96 -> 256
(x8/3), goes by x2 stages to the next power of two at or above it (x4: 384) and is then
resized to the target with an antialiased resize (``final_resize``, bicubic by default)
*before* the output conv, so the last learned layer works at the target resolution and
can undo the resize's blur.

The output is a residual on top of the bicubic-upscaled input (``input_residual=True``,
when input and output channels agree): the net learns the detail bicubic misses, and an
untrained net (output conv at zero) already equals bicubic. Set it false for Ledig's
plain output.
"""

from __future__ import annotations

from torch import Tensor, nn

from joint_colsr.color import resize_bicubic

from joint_colsr.nets.blocks import (
    PixelShuffleUpsampler,
    ResidualBlock,
    check_image,
    check_resize_mode,
    check_sizes,
    pixel_shuffle_factors,
    resize,
    scaled_hw,
    scaled_width,
)


class SRResNet(nn.Module):
    """Super-resolution network mapping ``(B, C_in, r, r)`` to ``(B, C_out, S, S)``.

    Args:
        input_size: side of the input the net is built for (its scale is ``output_size / input_size``).
        output_size: side of the output.
        in_channels, out_channels: 1 for L*; 3 for L*a*b* (the colorize-first cascade).
        width: channels of the trunk (64 in SRResNet), times ``width_mult``.
        blocks: residual blocks (16 in SRResNet).
        width_mult: multiplies ``width`` (tests build tiny nets with it).
        batch_norm: BN inside the residual blocks (SRResNet: yes).
        final_resize: interpolation of the final resize for non-power-of-two scales.
        input_residual: add the bicubic-upscaled input to the output (needs ``in_channels == out_channels``).

    Shapes:
        ``(B, in_channels, h, w) -> (B, out_channels, round(h * s), round(w * s))``, values
        in the normalized range of the input (no output activation: a residual head).
    """

    def __init__(
        self,
        input_size: int = 96,
        output_size: int = 256,
        in_channels: int = 1,
        out_channels: int = 1,
        width: int = 64,
        blocks: int = 16,
        width_mult: float = 1.0,
        batch_norm: bool = True,
        final_resize: str = "bicubic",
        input_residual: bool = True,
    ) -> None:
        super().__init__()
        check_sizes(input_size, output_size)
        if blocks < 0:
            raise ValueError(f"blocks must be >= 0, got {blocks}")
        if input_residual and in_channels != out_channels:
            raise ValueError(f"input_residual needs in_channels == out_channels, got {in_channels} and {out_channels}")
        self.input_size, self.output_size = int(input_size), int(output_size)
        self.scale = self.output_size / self.input_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.final_resize = check_resize_mode(final_resize, "final_resize")
        self.input_residual = input_residual
        factors, _ = pixel_shuffle_factors(self.scale)  # the final resize handles the rest
        c = scaled_width(width, width_mult)

        self.head = nn.Sequential(nn.Conv2d(in_channels, c, 9, padding=4), nn.PReLU(c))
        self.trunk = nn.Sequential(*[ResidualBlock(c, batch_norm) for _ in range(blocks)])
        self.trunk_tail = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.upsample = PixelShuffleUpsampler(c, c, factors)
        self.tail = nn.Conv2d(c, out_channels, 9, padding=4)
        if input_residual:
            # Untrained net = bicubic upscaling; training learns the missing detail.
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, h, w) -> (B, out_channels, round(h * s), round(w * s))``."""
        check_image(x, self.in_channels)
        out_hw = scaled_hw(tuple(x.shape[-2:]), self.scale)
        feat = self.head(x)
        feat = feat + self.trunk_tail(self.trunk(feat))
        feat = resize(self.upsample(feat), out_hw, self.final_resize)
        out = self.tail(feat)
        if self.input_residual:
            out = out + resize_bicubic(x, out_hw)
        return out


class SROnlyNet(nn.Module):
    """``model=sr_only``: SRResNet on L*, and no colour at all.

    For the joint task it returns ``{"l": SR(L*), "ab": 0}``: a super-resolution network
    without colorization. Trained on the L* loss (``l_loss_weight`` of the system), it is
    measured with the same metrics: ``val/psnr`` (ground-truth L* + its a*b* = 0) equals the
    gray baseline by construction, and ``val/psnr_joint`` (its own L* + a*b* = 0) shows what
    SR alone costs or gains on the full colour image. Arguments are :class:`SRResNet`'s.
    """

    def __init__(self, input_size: int = 96, output_size: int = 256, width: int = 64, blocks: int = 16,
                 width_mult: float = 1.0, batch_norm: bool = True, final_resize: str = "bicubic",
                 input_residual: bool = True) -> None:
        super().__init__()
        self.sr = SRResNet(input_size, output_size, 1, 1, width, blocks, width_mult, batch_norm, final_resize, input_residual)
        self.input_size, self.output_size = self.sr.input_size, self.sr.output_size

    def forward(self, l_lowres: Tensor) -> dict[str, Tensor]:
        """``(B, 1, r, r)`` normalized L* -> ``{"l": (B, 1, S, S), "ab": zeros (B, 2, S, S)}``."""
        l_sr = self.sr(l_lowres)
        return {"l": l_sr, "ab": l_sr.new_zeros(l_sr.shape[0], 2, *l_sr.shape[-2:])}
