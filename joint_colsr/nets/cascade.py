"""``cascade``: colorization and super-resolution as two networks in a row.

* ``order=colorize_first``: f_r(f_c(x)). The Iizuka-style colorizer predicts a*b* at the
  input resolution; L* and a*b* together (3 channels) go through a 3-channel SRResNet,
  which returns L* and a*b* at the target size (``ab_upscale=net``, the end-to-end
  default). With ``ab_upscale=bicubic`` the upscaler is a 1-channel SRResNet on L* (an
  ``sr_only`` network) and a*b* are upscaled by the suite's bicubic: the SR papers'
  convention for colour (super-resolve luminance, interpolate chroma), and the form whose
  stages can be trained separately (``python -m joint_colsr.two_stage``).
* ``order=upscale_first``: f_c(f_r(x)). A 1-channel SRResNet upscales L*; the colorizer
  colorizes the upscaled L* at the target size (its global-features path still sees the
  image at the input size, so a colorizer trained as ``model=ic_only`` fits both orders).

Both return ``{"ab", "l"}`` (the cascade's own L*, trained with the system's L* loss).

``colorizer_kind=exemplar`` (``model=cascade_exemplar``) makes the colorizer an exemplar-guided
one: :class:`~joint_colsr.nets.exemplar.ExemplarJointNet` at one scale (input size = output
size, its L* guide the colorizer's own input), so the cascade takes the batch's exemplar
(``takes_exemplar``) and hands it to its colorizer: the cascade counterpart of
``model=joint_exemplar`` (``compare --models joint_exemplar cascade_exemplar``).

Two ways to train it, labelled in :attr:`CascadeNet.training` and by ``eval``:

* **end to end** (``model=cascade``): both stages trained together as one network;
* **two-stage** (``python -m joint_colsr.two_stage``): ``ic_only`` and ``sr_only`` trained
  separately, then composed and frozen (the paper's "colorizer followed by an upscaler").
Either stage can start from a checkpoint (``colorizer_checkpoint`` / ``upscaler_checkpoint``:
a Lightning checkpoint of ``ic_only``, ``sr_only`` or ``cascade``, or a plain state dict)
and be frozen (``freeze_colorizer`` / ``freeze_upscaler``: no gradients, BatchNorm kept in
eval mode). Which checkpoints fit which stage: the colorizer takes ``ic_only`` or cascade
checkpoints; the upscaler of ``upscale_first`` takes ``sr_only`` or cascade checkpoints;
the 3-channel upscaler of ``colorize_first`` takes only cascade checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from joint_colsr.color import resize_bicubic
from joint_colsr.nets.blocks import check_image, check_sizes
from joint_colsr.nets.exemplar import ExemplarJointNet
from joint_colsr.nets.iizuka import IizukaColorizer
from joint_colsr.nets.srresnet import SRResNet

ORDERS = ("colorize_first", "upscale_first")
#: The colorizer: Iizuka et al.'s (automatic), or an exemplar-guided one.
COLORIZER_KINDS = ("iizuka", "exemplar")
#: How a colorize-first cascade brings a*b* to the target size.
AB_UPSCALES = ("net", "bicubic")
#: Where a stage's weights sit in the checkpoints this suite writes (tried in this order).
STAGE_PREFIXES = ("net.", "net.sr.", "net.colorizer.", "net.upscaler.", "")


def load_stage_weights(module: nn.Module, path: str | Path, stage: str) -> str:
    """Load ``module``'s weights from a checkpoint whose keys match under one known prefix.

    Args:
        module: the stage to fill.
        path: a Lightning checkpoint (``state_dict`` inside) or a plain state dict file.
        stage: the stage's name, for error messages (e.g. ``"colorizer"``).

    Returns:
        The prefix the weights were found under.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.net.{stage}_checkpoint={path} is not a file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    wanted = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    for prefix in STAGE_PREFIXES:
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if {k: tuple(v.shape) for k, v in found.items()} == wanted:
            module.load_state_dict(found)
            return prefix
    raise ValueError(
        f"model.net.{stage}_checkpoint={path}: no prefix in {STAGE_PREFIXES} gives exactly the {stage}'s "
        f"{len(wanted)} tensors with their shapes (is it a checkpoint of a matching net with the same width and blocks?)"
    )


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


class CascadeNet(nn.Module):
    """Two-stage colorization + super-resolution (see the module docs).

    Args:
        input_size, output_size: the task's sizes.
        order: ``colorize_first`` | ``upscale_first``.
        width_mult: multiplies the widths of both stages (on top of their own ``width_mult``).
        colorizer: keyword arguments of :class:`IizukaColorizer` (sizes are set here).
        upscaler: keyword arguments of :class:`SRResNet` (sizes and channels are set here).
        colorizer_checkpoint, upscaler_checkpoint: files to load a stage from (``None``: random init).
        freeze_colorizer, freeze_upscaler: keep that stage fixed.
        ab_upscale: ``colorize_first`` only: ``net`` (a 3-channel upscaler on L*a*b*) or
            ``bicubic`` (a 1-channel upscaler on L*; a*b* resized bicubically).
        colorizer_kind: ``iizuka`` (:class:`IizukaColorizer`, ``colorizer`` its arguments) or
            ``exemplar`` (:class:`ExemplarJointNet` at one scale, ``colorizer`` its arguments).

    Shapes:
        ``(B, 1, h, w) -> {"ab": (B, 2, h*s, w*s), "l": (B, 1, h*s, w*s)}`` (plus ``logits``
        when the colorizer classifies).
    """

    def __init__(
        self,
        input_size: int = 96,
        output_size: int = 256,
        order: str = "colorize_first",
        width_mult: float = 1.0,
        colorizer: Mapping[str, Any] | None = None,
        upscaler: Mapping[str, Any] | None = None,
        colorizer_checkpoint: str | None = None,
        upscaler_checkpoint: str | None = None,
        freeze_colorizer: bool = False,
        freeze_upscaler: bool = False,
        ab_upscale: str = "net",
        colorizer_kind: str = "iizuka",
    ) -> None:
        super().__init__()
        if colorizer_kind not in COLORIZER_KINDS:
            raise ValueError(f"colorizer_kind must be one of {', '.join(COLORIZER_KINDS)}, got {colorizer_kind!r}")
        #: Whether the batch's exemplar reaches the colorizer (``colorizer_kind=exemplar``).
        self.takes_exemplar = colorizer_kind == "exemplar"
        check_sizes(input_size, output_size, minimum=32)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        if ab_upscale not in AB_UPSCALES:
            raise ValueError(f"ab_upscale must be one of {', '.join(AB_UPSCALES)}, got {ab_upscale!r}")
        if ab_upscale == "bicubic" and order != "colorize_first":
            raise ValueError("ab_upscale=bicubic applies to order=colorize_first only (upscale_first colorizes at the target size)")
        self.ab_upscale = ab_upscale
        self.input_size, self.output_size, self.order = int(input_size), int(output_size), order
        c_kwargs, u_kwargs = dict(colorizer or {}), dict(upscaler or {})
        for key in ("input_size", "output_size", "global_input_size", "in_channels", "out_channels"):
            if key in c_kwargs or key in u_kwargs:
                raise ValueError(f"model.net.colorizer/upscaler.{key} is set by the cascade; set data.* sizes instead")
        c_kwargs["width_mult"] = c_kwargs.get("width_mult", 1.0) * width_mult
        u_kwargs["width_mult"] = u_kwargs.get("width_mult", 1.0) * width_mult
        r, s = self.input_size, self.output_size

        def make_colorizer(size: int) -> nn.Module:
            if self.takes_exemplar:  # one scale: a*b* at the size it sees, its L* guide its own input
                return ExemplarJointNet(input_size=size, output_size=size, l_source="interpolated", **c_kwargs)
            return IizukaColorizer(input_size=size, output_size=size, global_input_size=r, **c_kwargs)

        if order == "colorize_first":
            self.colorizer = make_colorizer(r)
            channels = 3 if ab_upscale == "net" else 1
            self.upscaler = SRResNet(input_size=r, output_size=s, in_channels=channels, out_channels=channels, **u_kwargs)
        else:
            self.upscaler = SRResNet(input_size=r, output_size=s, in_channels=1, out_channels=1, **u_kwargs)
            self.colorizer = make_colorizer(s)
        self.scale = s / r
        if colorizer_checkpoint:
            load_stage_weights(self.colorizer, colorizer_checkpoint, "colorizer")
        if upscaler_checkpoint:
            load_stage_weights(self.upscaler, upscaler_checkpoint, "upscaler")
        self.frozen = [name for name, flag in (("colorizer", freeze_colorizer), ("upscaler", freeze_upscaler)) if flag]
        for name in self.frozen:
            _freeze(getattr(self, name))
        #: ``two-stage`` when both stages are fixed (trained separately), else ``end to end``.
        self.training_kind = "two-stage" if len(self.frozen) == 2 else "end to end"

    def train(self, mode: bool = True) -> CascadeNet:
        super().train(mode)
        for name in self.frozen:  # frozen stages keep their BatchNorm statistics
            getattr(self, name).eval()
        return self

    def _colorize(self, l_norm: Tensor, exemplar: Tensor | None = None,
                  exemplar_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        kwargs = {"exemplar": exemplar, "exemplar_mask": exemplar_mask} if self.takes_exemplar else {}
        out = self.colorizer(l_norm, **kwargs)
        if isinstance(out, Mapping):
            return out["ab"], out.get("logits")
        return out, None

    def forward(self, l_lowres: Tensor, exemplar: Tensor | None = None, exemplar_mask: Tensor | None = None) -> dict[str, Tensor]:
        """``(B, 1, h, w)`` normalized L* -> ``{"ab", "l"}`` at ``h*s, w*s``; ``exemplar`` /
        ``exemplar_mask``: for an exemplar colorizer (see :class:`ExemplarJointNet`), else ignored."""
        check_image(l_lowres, 1, "l_lowres")
        if self.order == "colorize_first" and self.ab_upscale == "bicubic":
            ab_low, logits = self._colorize(l_lowres, exemplar, exemplar_mask)
            l_high = self.upscaler(l_lowres)
            out = {"l": l_high, "ab": resize_bicubic(ab_low, tuple(l_high.shape[-2:]))}
        elif self.order == "colorize_first":
            ab_low, logits = self._colorize(l_lowres, exemplar, exemplar_mask)
            lab = self.upscaler(torch.cat([l_lowres, ab_low], dim=1))
            out = {"l": lab[:, :1], "ab": lab[:, 1:]}
        else:
            l_high = self.upscaler(l_lowres)
            ab, logits = self._colorize(l_high, exemplar, exemplar_mask)
            out = {"l": l_high, "ab": ab}
        if logits is not None:
            out["logits"] = logits
        return out
