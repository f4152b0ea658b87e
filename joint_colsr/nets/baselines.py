"""Baselines with no weights, run through the same system, metrics and tables as trained nets.

* ``gray``: a* = b* = 0 with the ground-truth L*: the colorization floor (the task as
  colorization papers pose it, where full-resolution L* is given).
* ``bicubic``: a* = b* = 0 with the input L* upscaled bicubically: the floor of the joint
  task, where L* too must be super-resolved.

Under protocol 1 (ground-truth L* + predicted a*b*) the two are the same number; they
differ in the L* they deliver (protocol 2 and Y-PSNR).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from joint_colsr.color import upscale_l

BASELINES = ("gray", "bicubic")


class _NeutralColour(nn.Module):
    #: Any output size (``out_hw``): a baseline has no weights tied to a scale.
    any_scale = True

    def __init__(self, input_size: int = 96, output_size: int = 256) -> None:
        super().__init__()
        if not 1 <= input_size <= output_size:
            raise ValueError(f"input_size ({input_size}) must be in [1, output_size ({output_size})]")
        self.input_size, self.output_size = int(input_size), int(output_size)
        self.scale = self.output_size / self.input_size

    def output_hw(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        return int(round(in_hw[0] * self.scale)), int(round(in_hw[1] * self.scale))


class GrayBaseline(_NeutralColour):
    """a* = b* = 0 and the ground-truth L* (``needs_l_highres``): ``{"ab", "l"}`` at ``l_highres``'s size."""

    needs_l_highres = True

    def forward(self, l_lowres: Tensor, l_highres: Tensor, out_hw: tuple[int, int] | None = None) -> dict[str, Tensor]:
        if out_hw is not None and tuple(out_hw) != tuple(l_highres.shape[-2:]):
            raise ValueError(f"the gray baseline delivers l_highres's size {tuple(l_highres.shape[-2:])}, not {tuple(out_hw)}")
        return {"ab": torch.zeros_like(l_highres).repeat(1, 2, 1, 1), "l": l_highres}


class BicubicBaseline(_NeutralColour):
    """a* = b* = 0 and the input L* upscaled bicubically (PIL's kernel): ``{"ab", "l"}``."""

    def forward(self, l_lowres: Tensor, out_hw: tuple[int, int] | None = None) -> dict[str, Tensor]:
        l_up = upscale_l(l_lowres, tuple(out_hw) if out_hw is not None else self.output_hw(tuple(l_lowres.shape[-2:])))
        return {"ab": torch.zeros_like(l_up).repeat(1, 2, 1, 1), "l": l_up}


def baseline_net_config(name: str, input_size: int, output_size: int) -> dict:
    """The net config (``_target_``) of baseline ``name`` (``gray`` or ``bicubic``)."""
    if name not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {name!r}")
    target = {"gray": GrayBaseline, "bicubic": BicubicBaseline}[name]
    return {"_target_": f"{target.__module__}.{target.__name__}", "input_size": int(input_size), "output_size": int(output_size)}
