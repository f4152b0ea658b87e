"""``residual_joint``: the seed paper's Section IV network (deep, residual, wide, guided by L*).

Section IV lists what a better joint network needs: many layers built from residual
blocks, wide intermediate features (e.g. 512), a relatively high input resolution R, and an
answer to "where does the high-resolution L* come from". This net is that list:

* head conv (3x3) at the input resolution, a trunk of ``blocks`` residual blocks of
  ``width`` channels (SRResNet's block, up to 512 wide), a global skip;
* sub-pixel upsampling to the target (x2 stages to the next power of two at or above the
  scale, then an antialiased resize to the exact size when the scale is not reachable by
  x2/x3 stages, as in :class:`~joint_colsr.nets.srresnet.SRResNet`), ``decoder_width`` channels;
* a guidance map of high-resolution L* concatenated to the upsampled features, two 3x3
  conv-BN-LeakyReLU layers, and the a*b* head (tanh, initialized at zero: gray).

``l_source`` chooses the guidance L*:

* ``gt``: the reference image's L* (the paper's exemplar setting). The net declares
  ``needs_l_highres = True``, and the system feeds it ``l_highres``.
* ``interpolated``: the bicubic-upscaled input L* (the paper notes this "beats the point"
  of a joint network; it is the honest non-exemplar baseline). The guide is also the L*
  the net delivers (``l``): the suite's bicubic (:func:`joint_colsr.color.upscale_l`), so
  its L* scores exactly as ``baseline=bicubic``.
* ``predicted``: the net also predicts L* (bicubic input + a learned residual from the
  upsampled features) and uses its own prediction as guidance; it returns ``l`` and the
  system adds an L* loss (``l_loss_weight``): a true joint SR + colorization model.

``upsampler="implicit"`` (any magnification): the trunk's features at the input resolution go
to a continuous upsampler (:class:`~joint_colsr.nets.implicit.ImplicitUpsampler`) queried at
the requested output size, with the guide L* at each output pixel as an extra input; it
replaces the sub-pixel upsampler, the guided decoder and the heads. With ``predicted`` its
first output channel is the L* residual over the bicubic input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from joint_colsr.color import upscale_l

from joint_colsr.nets.implicit import ImplicitUpsampler, check_upsampler, output_hw_for
from joint_colsr.nets.blocks import (
    ConvBNAct,
    PixelShuffleUpsampler,
    ResidualBlock,
    check_image,
    check_resize_mode,
    check_sizes,
    make_output_activation,
    pixel_shuffle_factors,
    resize,
    scaled_hw,
    scaled_width,
)

L_SOURCES = ("gt", "interpolated", "predicted")


class ResidualJointNet(nn.Module):
    """Low-resolution L* (+ a high-resolution L* guide) -> high-resolution a*b* (and L*).

    Args:
        input_size: side of the input the net is built for (R).
        output_size: side of the output.
        l_source: ``gt`` | ``interpolated`` | ``predicted`` (see the module docs).
        width: trunk channels (times ``width_mult``); Section IV asks for up to 512.
        blocks: residual blocks in the trunk.
        decoder_width: channels of the upsampler and the guided decoder (times ``width_mult``).
        width_mult: multiplies ``width`` and ``decoder_width`` (tests build tiny nets).
        batch_norm: BN inside the residual blocks.
        final_resize: interpolation of the final resize for non-power-of-two scales.
        negative_slope: LeakyReLU slope in the guided decoder.
        output_activation: ``tanh`` | ``none``.
        upsampler: ``fixed`` (sub-pixel stages to one magnification) | ``implicit`` (any size).
        implicit_hidden: hidden width of the implicit upsampler's MLP (times ``width_mult``).
        implicit_layers: hidden layers of that MLP.

    Shapes:
        ``l_lowres (B, 1, h, w)`` [and ``l_highres (B, 1, h*s, w*s)`` for ``gt``] ->
        ``(B, 2, h*s, w*s)`` a*b* for ``gt``; a dict ``{"ab", "l"}`` for ``interpolated`` and
        ``predicted`` (``l``: the L* the net delivers, its guide).
    """

    def __init__(
        self,
        input_size: int = 96,
        output_size: int = 256,
        l_source: str = "predicted",
        width: int = 128,
        blocks: int = 16,
        decoder_width: int = 64,
        width_mult: float = 1.0,
        batch_norm: bool = True,
        final_resize: str = "bicubic",
        negative_slope: float = 0.2,
        output_activation: str = "tanh",
        upsampler: str = "fixed",
        implicit_hidden: int = 64,
        implicit_layers: int = 2,
    ) -> None:
        super().__init__()
        check_sizes(input_size, output_size)
        self.upsampler = check_upsampler(upsampler)
        #: Whether ``forward`` takes ``out_hw`` (any output size).
        self.any_scale = upsampler == "implicit"
        if l_source not in L_SOURCES:
            raise ValueError(f"l_source must be one of {', '.join(L_SOURCES)}, got {l_source!r}")
        if blocks < 0:
            raise ValueError(f"blocks must be >= 0, got {blocks}")
        self.input_size, self.output_size = int(input_size), int(output_size)
        self.scale = self.output_size / self.input_size
        self.l_source = l_source
        self.needs_l_highres = l_source == "gt"
        self.final_resize = check_resize_mode(final_resize, "final_resize")
        c, d = scaled_width(width, width_mult), scaled_width(decoder_width, width_mult)
        factors, _ = pixel_shuffle_factors(self.scale)

        self.head = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.PReLU(c))
        self.trunk = nn.Sequential(*[ResidualBlock(c, batch_norm) for _ in range(blocks)])
        self.trunk_tail = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.head_activation = make_output_activation(output_activation)
        if self.any_scale:
            self.implicit = ImplicitUpsampler(c, 3 if l_source == "predicted" else 2, hidden=scaled_width(implicit_hidden, width_mult),
                                              layers=implicit_layers, guide_channels=1, negative_slope=negative_slope)
            return
        self.upsample = PixelShuffleUpsampler(c, d, factors) if factors else nn.Conv2d(c, d, 3, padding=1)
        if l_source == "predicted":
            self.l_head = nn.Conv2d(d, 1, 3, padding=1)
            # Untrained: L* = bicubic input; training learns the residual detail.
            nn.init.zeros_(self.l_head.weight)
            nn.init.zeros_(self.l_head.bias)
        self.decoder = nn.Sequential(
            ConvBNAct(d + 1, d, negative_slope=negative_slope),
            ConvBNAct(d, d, negative_slope=negative_slope),
        )
        self.head_ab = nn.Conv2d(d, 2, 3, padding=1)
        nn.init.zeros_(self.head_ab.weight)
        nn.init.zeros_(self.head_ab.bias)

    def forward(self, l_lowres: Tensor, l_highres: Tensor | None = None,
                out_hw: tuple[int, int] | None = None) -> Tensor | dict[str, Tensor]:
        """``(B, 1, h, w)`` normalized L* -> a*b* ``(B, 2, h*s, w*s)`` (a dict with ``l`` unless ``gt``).

        ``out_hw``: the output size, for an implicit upsampler only (default: the input times
        the built scale; with ``gt``, ``l_highres``'s size)."""
        out_hw = self._check_call(l_lowres, l_highres, out_hw)
        return self._decode(self.trunk_features(l_lowres), l_lowres, l_highres, out_hw)

    def trunk_features(self, l_lowres: Tensor) -> Tensor:
        """``(B, 1, h, w)`` normalized L* -> the trunk's ``(B, C, h, w)`` features (head + residual trunk + skip)."""
        feat = self.head(l_lowres)
        return feat + self.trunk_tail(self.trunk(feat))

    def _check_call(self, l_lowres: Tensor, l_highres: Tensor | None, out_hw: tuple[int, int] | None) -> tuple[int, int]:
        """Check a call's inputs; the output size it asks for."""
        check_image(l_lowres, 1, "l_lowres")
        if self.any_scale:
            if out_hw is None and l_highres is not None:
                out_hw = tuple(l_highres.shape[-2:])
            out_hw = output_hw_for(tuple(l_lowres.shape[-2:]), None, out_hw, self.scale)
        else:
            fixed = scaled_hw(tuple(l_lowres.shape[-2:]), self.scale)
            if out_hw is not None and tuple(out_hw) != fixed:
                raise ValueError(f"this ResidualJointNet is fixed-scale (x{self.scale:.4g}): it cannot produce {tuple(out_hw)} "
                                 f"from {tuple(l_lowres.shape[-2:])}; train one with model.net.upsampler=implicit for any size")
            out_hw = fixed
        if self.needs_l_highres:
            if l_highres is None:
                raise ValueError("l_source='gt' needs the ground-truth L* guide: call net(l_lowres, l_highres=...)")
            check_image(l_highres, 1, "l_highres")
            if tuple(l_highres.shape[-2:]) != out_hw:
                raise ValueError(f"l_highres must be {out_hw} for an input of {tuple(l_lowres.shape[-2:])}, got {tuple(l_highres.shape[-2:])}")
        return out_hw

    def _decode(self, feat: Tensor, l_lowres: Tensor, l_highres: Tensor | None,
                out_hw: tuple[int, int]) -> Tensor | dict[str, Tensor]:
        """The trunk's features -> the outputs at ``out_hw`` (the upsampler, the L* guide, the heads)."""
        if self.any_scale:
            return self._implicit_outputs(feat, l_lowres, l_highres, out_hw)
        feat = resize(self.upsample(feat), out_hw, self.final_resize)
        if self.l_source == "gt":
            guide = l_highres
        else:
            guide = upscale_l(l_lowres, out_hw)
            if self.l_source == "predicted":
                guide = guide + self.l_head(feat)
        ab = self.head_activation(self.head_ab(self.decoder(torch.cat([feat, guide.to(feat.dtype)], dim=1))))
        if self.l_source == "gt":
            return ab
        return {"ab": ab, "l": guide}

    def _implicit_outputs(self, feat: Tensor, l_lowres: Tensor, l_highres: Tensor | None,
                          out_hw: tuple[int, int]) -> Tensor | dict[str, Tensor]:
        guide = l_highres if self.l_source == "gt" else upscale_l(l_lowres, out_hw)
        out = self.implicit(feat, out_hw, guide=guide.to(feat.dtype))
        if self.l_source == "gt":
            return self.head_activation(out)
        ab = self.head_activation(out[:, -2:])
        l_own = guide + out[:, :1] if self.l_source == "predicted" else guide
        return {"ab": ab, "l": l_own}
