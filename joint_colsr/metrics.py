"""Image-quality metrics, computed the way the colorization literature reports them.

Protocol (Zhang et al. 2017, ``richzhang/colorization-pytorch``): ground-truth L* merged
with the predicted a*b*, converted to sRGB, rounded to 8 bits, PSNR over all RGB pixels of
the whole image at the output size (no border crop), per image, then averaged over images.
PSNR itself is torchmetrics'.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

from joint_colsr.color import merge_l_ab_to_rgb, quantize_uint8

__all__ = ["colorization_psnr", "psnr_uint8", "rgb_from_prediction"]


def psnr_uint8(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of 8-bit images.

    Args:
        pred, target: ``(B, C, H, W)`` with values in [0, 255] (uint8 or float).

    Returns:
        ``(B,)`` float32 PSNR; identical images give ``inf``.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B, C, H, W)")
    return peak_signal_noise_ratio(pred.float(), target.float(), data_range=255.0, reduction="none", dim=(1, 2, 3))


def rgb_from_prediction(l_highres: Tensor, ab_pred: Tensor) -> Tensor:
    """Ground-truth L* + predicted a*b* -> 8-bit sRGB as float ``(B, 3, H, W)`` in [0, 255]."""
    return quantize_uint8(merge_l_ab_to_rgb(l_highres, ab_pred))


def colorization_psnr(l_highres: Tensor, ab_pred: Tensor, rgb_target: Tensor) -> Tensor:
    """Per-image PSNR of (ground-truth L* + predicted a*b*) against the reference image.

    Args:
        l_highres: ``(B, 1, S, S)`` normalized ground-truth L*.
        ab_pred: ``(B, 2, S, S)`` normalized predicted a*b*.
        rgb_target: ``(B, 3, S, S)`` uint8 reference image.

    Returns:
        ``(B,)`` PSNR in dB.
    """
    with torch.autocast(device_type=ab_pred.device.type, enabled=False):
        return psnr_uint8(rgb_from_prediction(l_highres, ab_pred.float()), rgb_target)
