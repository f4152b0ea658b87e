"""Image-quality metrics, computed the way the colorization and SR literature reports them.

Colorization PSNR is not comparable across protocols (the same two models differ by about
3 dB between published ones), so every function here says exactly what it compares.

Protocols of the suite (all at the output size, per image, then averaged over images):

* **Protocol 1** (``psnr``, ``ssim``), Zhang et al. 2017's code (``richzhang/colorization-pytorch``)
  and the seed paper's Table III: ground-truth L* merged with the predicted a*b*, converted
  to sRGB, rounded to 8 bits, compared with the reference image over all RGB pixels of
  the whole image (no border crop for PSNR).
* **Protocol 2** (``psnr_joint``, ``ssim_joint``), the honest number for the joint task: the
  model's *own* L* (the network's predicted L* where it returns one, otherwise the input
  L* upscaled bicubically) merged with its a*b*: what a user of the model actually gets.
* ``psnr_ab``: a*b* alone, in CIE units, peak 220 (the +-110 span of the normalization).
* ``psnr_y``: the luminance the model delivers, as SR papers score it (BasicSR, EDSR):
  BT.601 luma ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (R, G, B in [0, 1]) of 8-bit
  images, not rounded, border of ``crop_border`` pixels removed. The image is the model's
  own L* with the *ground-truth* a*b*, so colour errors do not enter: it isolates the
  super-resolution half of the task.
* ``colorfulness`` (Hasler and Suesstrunk 2003, as DDColor reports it) of the protocol-1
  image and of the reference; the dataset-level gap ``|mean CF(pred) - mean CF(gt)|``.
* ``auc_ab`` (Zhang et al. 2016): share of pixels whose a*b* error (Euclidean, CIE units)
  is within a threshold, swept over 0..150, area under that curve divided by 150.

PSNR is torchmetrics'; SSIM is kornia's map (Gaussian window of 11, sigma 1.5, on 8-bit
values), averaged without the 5-pixel border the window cannot cover: scikit-image's,
MATLAB's and BasicSR's convention (torchmetrics' and kornia's own means include the
padded border and read about 3e-4 higher).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor
from kornia.metrics import ssim as kornia_ssim

from joint_colsr.color import denormalize_ab, merge_l_ab_to_rgb, quantize_uint8

__all__ = [
    "AB_PSNR_PEAK",
    "AUC_MAX_THRESHOLD",
    "PER_IMAGE_METRICS",
    "ab_error_auc",
    "colorfulness",
    "colorization_psnr",
    "image_metrics",
    "psnr_ab",
    "psnr_uint8",
    "psnr_y",
    "rgb_from_prediction",
    "rgb_to_y_bt601",
    "ssim_uint8",
    "summarize",
]

#: Peak of a*b* PSNR: the span of the +-110 normalization (the sRGB gamut lies inside it).
AB_PSNR_PEAK = 220.0
#: Largest a*b* error threshold of Zhang et al. 2016's AuC.
AUC_MAX_THRESHOLD = 150
_SSIM_KERNEL = 11


def _check_pair(pred: Tensor, target: Tensor, channels: int | None = None) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B, C, H, W)")
    if channels is not None and pred.shape[1] != channels:
        raise ValueError(f"pred and target must have {channels} channels, got {pred.shape[1]}")


def psnr_uint8(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of 8-bit images.

    Args:
        pred, target: ``(B, C, H, W)`` with values in [0, 255] (uint8 or float).

    Returns:
        ``(B,)`` float32 PSNR; identical images give ``inf``.
    """
    _check_pair(pred, target)
    return _per_image_psnr(pred.float(), target.float(), 255.0)


def _per_image_psnr(pred: Tensor, target: Tensor, peak: float) -> Tensor:
    """``10 log10(peak^2 / MSE)`` per image of ``(B, C, H, W)``; identical images give ``inf``.

    torchmetrics' ``peak_signal_noise_ratio`` gives the same numbers but builds its pixel
    count with ``torch.tensor(..., device=...)`` on every call: a host-to-device copy that
    makes the host wait on a GPU, once per validation batch and metric.
    """
    mse = (pred - target).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(peak**2 / mse)


def ssim_uint8(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image SSIM of 8-bit images (Gaussian window 11, sigma 1.5, averaged over channels).

    Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255, channel_axis=...)``: the 5-pixel border
    that the window cannot cover is left out of the mean.

    Args:
        pred, target: ``(B, C, H, W)`` in [0, 255], each side at least 11 pixels.

    Returns:
        ``(B,)`` float32 SSIM.
    """
    _check_pair(pred, target)
    if min(pred.shape[-2:]) < _SSIM_KERNEL:
        raise ValueError(f"SSIM needs images of at least {_SSIM_KERNEL}x{_SSIM_KERNEL}, got {tuple(pred.shape[-2:])}")
    # kornia's SSIM map (Gaussian window, sigma 1.5) is twice as fast as torchmetrics' on CPU.
    full = kornia_ssim(pred.float(), target.float(), window_size=_SSIM_KERNEL, max_val=255.0)
    pad = (_SSIM_KERNEL - 1) // 2
    return full[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))


def rgb_to_y_bt601(rgb255: Tensor) -> Tensor:
    """BT.601 luma of 8-bit RGB, as SR papers compute it (BasicSR's ``rgb2ycbcr(y_only=True)``).

    Args:
        rgb255: ``(B, 3, H, W)`` in [0, 255].

    Returns:
        ``(B, 1, H, W)`` float Y in [16, 235] (not rounded).
    """
    if rgb255.dim() != 4 or rgb255.shape[1] != 3:
        raise ValueError(f"rgb255 must be (B, 3, H, W), got {tuple(rgb255.shape)}")
    weights = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64, device=rgb255.device)
    y = torch.einsum("bchw,c->bhw", rgb255.double() / 255.0, weights) + 16.0
    return y.unsqueeze(1)


def psnr_y(pred: Tensor, target: Tensor, crop_border: int = 0) -> Tensor:
    """Per-image Y-channel PSNR of 8-bit RGB images, border of ``crop_border`` pixels removed.

    Args:
        pred, target: ``(B, 3, H, W)`` in [0, 255] (rounded to 8 bits by the caller).
        crop_border: pixels removed on every side before comparing (SR papers: the scale).

    Returns:
        ``(B,)`` float32 PSNR in dB (peak 255).
    """
    _check_pair(pred, target, channels=3)
    if crop_border < 0 or 2 * crop_border >= min(pred.shape[-2:]):
        raise ValueError(f"crop_border must be in [0, {min(pred.shape[-2:]) // 2}), got {crop_border}")
    y_pred, y_target = rgb_to_y_bt601(pred), rgb_to_y_bt601(target)
    if crop_border:
        c = crop_border
        y_pred, y_target = y_pred[..., c:-c, c:-c], y_target[..., c:-c, c:-c]
    mse = (y_pred - y_target).pow(2).mean(dim=(1, 2, 3))
    return (10.0 * torch.log10(255.0**2 / mse)).float()


def psnr_ab(ab_pred: Tensor, ab_target: Tensor) -> Tensor:
    """Per-image PSNR of a*b* alone, in CIE units with peak :data:`AB_PSNR_PEAK`.

    Args:
        ab_pred, ab_target: ``(B, 2, H, W)`` normalized a*b* (``ab / 110``).

    Returns:
        ``(B,)`` float32 PSNR in dB.
    """
    _check_pair(ab_pred, ab_target, channels=2)
    return _per_image_psnr(denormalize_ab(ab_pred.float()), denormalize_ab(ab_target.float()), AB_PSNR_PEAK)


def colorfulness(rgb255: Tensor) -> Tensor:
    """Hasler and Suesstrunk's colourfulness of RGB images on the 0..255 scale.

    ``rg = |R - G|``, ``yb = |(R + G) / 2 - B|``;
    ``CF = sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2)``
    (population standard deviation, as ``numpy.std``). The absolute values are those of
    the implementation DDColor and its successors report CF with (the paper's opponent
    channels are signed); we follow the implementation so our CF compares with theirs.

    Args:
        rgb255: ``(B, 3, H, W)`` in [0, 255].

    Returns:
        ``(B,)`` float32 colourfulness (0 for a gray image).
    """
    if rgb255.dim() != 4 or rgb255.shape[1] != 3:
        raise ValueError(f"rgb255 must be (B, 3, H, W), got {tuple(rgb255.shape)}")
    r, g, b = rgb255.double().unbind(dim=1)
    rg = (r - g).abs().flatten(1)
    yb = (0.5 * (r + g) - b).abs().flatten(1)
    std = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
    mean = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return (std + 0.3 * mean).float()


def ab_error_auc(ab_pred: Tensor, ab_target: Tensor, max_threshold: int = AUC_MAX_THRESHOLD) -> Tensor:
    """Zhang et al. 2016's AuC of the per-pixel a*b* error, per image, in [0, 1].

    For thresholds ``t = 0, 1, ..., max_threshold`` (CIE a*b* units) the share of pixels
    with ``||ab_pred - ab_target||_2 <= t``; the area under that curve (trapezoids),
    divided by ``max_threshold``. 1 means every pixel is exact.

    Args:
        ab_pred, ab_target: ``(B, 2, H, W)`` normalized a*b* (``ab / 110``).
        max_threshold: the last threshold (150 in the paper).

    Returns:
        ``(B,)`` float32 AuC.
    """
    _check_pair(ab_pred, ab_target, channels=2)
    if max_threshold < 1:
        raise ValueError(f"max_threshold must be >= 1, got {max_threshold}")
    err = (denormalize_ab(ab_pred.float()) - denormalize_ab(ab_target.float())).norm(dim=1).flatten(1)
    thresholds = torch.arange(max_threshold + 1, device=err.device, dtype=err.dtype)
    # Share of pixels within each threshold, from the sorted errors (no (B, N, T) tensor).
    sorted_err, _ = err.sort(dim=1)
    within = torch.searchsorted(sorted_err.contiguous(), thresholds.expand(err.shape[0], -1).contiguous(), right=True)
    share = within.double() / err.shape[1]
    return (torch.trapezoid(share, dx=1.0, dim=1) / max_threshold).float()


def rgb_from_prediction(l_highres: Tensor, ab_pred: Tensor) -> Tensor:
    """Normalized L* + predicted a*b* -> 8-bit sRGB as float ``(B, 3, H, W)`` in [0, 255]."""
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


@torch.no_grad()
def image_metrics(
    l_highres: Tensor,
    l_own: Tensor,
    ab_pred: Tensor,
    ab_target: Tensor,
    rgb_target: Tensor,
    crop_border: int = 0,
) -> dict[str, Tensor]:
    """Every per-image metric of the suite for one batch (see the module docs).

    Args:
        l_highres: ``(B, 1, S, S)`` normalized ground-truth L*.
        l_own: ``(B, 1, S, S)`` normalized L* the model delivers (its own, or the input upscaled).
        ab_pred: ``(B, 2, S, S)`` normalized predicted a*b*.
        ab_target: ``(B, 2, S, S)`` normalized ground-truth a*b*.
        rgb_target: ``(B, 3, S, S)`` uint8 reference image.
        crop_border: border removed for ``psnr_y``.

    Returns:
        ``(B,)`` float32 tensors: ``psnr``, ``ssim`` (protocol 1), ``psnr_joint``,
        ``ssim_joint`` (protocol 2), ``psnr_ab``, ``psnr_y``, ``auc_ab``, ``colorfulness``,
        ``colorfulness_gt``; and ``rgb`` / ``rgb_joint``: the two 8-bit images, ``(B, 3, S, S)``.
    """
    with torch.autocast(device_type=ab_pred.device.type, enabled=False):
        l_highres, l_own, ab_pred, ab_target = (t.float() for t in (l_highres, l_own, ab_pred, ab_target))
        for name, t in (("l_own", l_own), ("ab_pred", ab_pred), ("ab_target", ab_target), ("rgb_target", rgb_target)):
            if t.shape[0] != l_highres.shape[0] or t.shape[-2:] != l_highres.shape[-2:]:
                raise ValueError(f"{name} {tuple(t.shape)} does not match l_highres {tuple(l_highres.shape)} in batch and size")
        target = rgb_target.float()
        rgb = rgb_from_prediction(l_highres, ab_pred)
        rgb_joint = rgb_from_prediction(l_own, ab_pred)
        rgb_own_l = rgb_from_prediction(l_own, ab_target)
        return {
            "psnr": psnr_uint8(rgb, target),
            "ssim": ssim_uint8(rgb, target),
            "psnr_joint": psnr_uint8(rgb_joint, target),
            "ssim_joint": ssim_uint8(rgb_joint, target),
            "psnr_ab": psnr_ab(ab_pred, ab_target),
            "psnr_y": psnr_y(rgb_own_l, target, crop_border),
            "auc_ab": ab_error_auc(ab_pred, ab_target),
            "colorfulness": colorfulness(rgb),
            "colorfulness_gt": colorfulness(target),
            "rgb": rgb,
            "rgb_joint": rgb_joint,
        }


#: Per-image metrics averaged over images by :func:`summarize` (the rest are images or derived).
PER_IMAGE_METRICS = ("psnr", "ssim", "psnr_joint", "ssim_joint", "psnr_ab", "psnr_y", "auc_ab", "colorfulness", "colorfulness_gt")


def summarize(per_image: Mapping[str, Tensor]) -> dict[str, float]:
    """Dataset-level numbers from per-image metrics: means over images, plus
    ``colorfulness_gap = |mean CF(pred) - mean CF(gt)|`` (DDColor's dCF) and ``num_images``.

    Infinite PSNRs (identical images) are averaged as they are: the mean is then ``inf``.
    """
    out: dict[str, float] = {}
    for key in PER_IMAGE_METRICS:
        if key in per_image and len(per_image[key]):
            out[key] = float(per_image[key].double().mean())
    if "colorfulness" in out and "colorfulness_gt" in out:
        out["colorfulness_gap"] = abs(out["colorfulness"] - out["colorfulness_gt"])
    lengths = {len(v) for v in per_image.values()}
    out["num_images"] = lengths.pop() if len(lengths) == 1 else 0
    return out
