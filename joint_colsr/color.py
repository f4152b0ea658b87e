"""CIE L*a*b* conversion and the network's normalization, on tensors (kornia's maths).

Conventions used everywhere in the suite:

* RGB images are sRGB. ``uint8`` tensors hold 0..255; float tensors hold 0..1.
* L* is in [0, 100]; a* and b* are in about [-128, 127] (the sRGB gamut reaches
  a* in [-86.2, 98.2] and b* in [-107.9, 94.5], D65 white point as kornia uses).
* The network sees **normalized** values:

  - ``l_norm = L* / 50 - 1``, so L* in [0, 100] maps to [-1, 1];
  - ``ab_norm = ab / 110``, so the whole sRGB gamut maps inside [-0.99, 0.90].

  110 is the a*b* scale of Zhang et al.'s reference colorization code: it keeps every
  reachable colour inside (-1, 1), which is what a ``tanh`` output head can produce.

Every conversion runs in float32 with autocast disabled: LAB's cube roots and the
sRGB gamma are not safe in bf16/fp16.

The conversion is kornia's (its sRGB gamma functions, its D65 matrices and white point, its
piecewise cube root), with one difference: kornia's ``rgb_to_lab``/``lab_to_rgb`` build their
constant matrices from Python lists on every call (``torch.tensor([...], device=image.device)``),
which on CUDA is a pageable host-to-device copy that waits for the stream, twice per batch.
Here the constants are made once per device and dtype and kept there (the white point folded
into the matrices). ``tests/test_color.py`` checks the result against kornia's functions.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from kornia.color import linear_rgb_to_rgb, rgb_to_linear_rgb
from torch import Tensor, nn

L_OFFSET = 50.0
L_SCALE = 50.0
AB_SCALE = 110.0

__all__ = [
    "AB_SCALE",
    "L_OFFSET",
    "L_SCALE",
    "LabBatch",
    "RgbToLabBatch",
    "denormalize_ab",
    "denormalize_l",
    "lab_to_rgb",
    "merge_l_ab_to_rgb",
    "normalize_ab",
    "normalize_l",
    "quantize_uint8",
    "resize_bicubic",
    "resize_uint8",
    "rgb_to_lab",
    "rgb_uint8_to_lab_batch",
    "upscale_l",
]


# kornia's constants (kornia/color/xyz.py and lab.py): linear sRGB -> XYZ, XYZ -> linear sRGB
# (D65), and the D65 reference white.
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_XYZ_TO_RGB = (
    (3.2404813432005266, -1.5371515162713185, -0.4985363261688878),
    (-0.9692549499965682, 1.8759900014898907, 0.0415559265582928),
    (0.0556466391351772, -0.2040413383665112, 1.0573110696453443),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)
_LAB_EPSILON = 0.008856  # (6/29)^3: below it, f(t) is linear
_LAB_CONSTANTS: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}


def _lab_constants(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(rgb -> xyz / white, xyz / white -> rgb)`` 3x3 matrices on ``device``: made once, then reused."""
    key = (torch.device(device), dtype)
    constants = _LAB_CONSTANTS.get(key)
    if constants is None:
        white = torch.tensor(_D65_WHITE, dtype=torch.float64)
        to_xyz = torch.tensor(_RGB_TO_XYZ, dtype=torch.float64) / white[:, None]
        to_rgb = torch.tensor(_XYZ_TO_RGB, dtype=torch.float64) * white[None, :]
        constants = (to_xyz.to(device=device, dtype=dtype), to_rgb.to(device=device, dtype=dtype))
        _LAB_CONSTANTS[key] = constants
    return constants


def _apply_3x3(matrix: Tensor, image: Tensor) -> Tensor:
    """``matrix @ pixel`` for every pixel of ``(B, 3, H, W)`` (einsum on CPU, a 1x1 convolution elsewhere, as kornia)."""
    if image.device.type == "cpu":
        return torch.einsum("oi,bihw->bohw", matrix, image)
    return F.conv2d(image, matrix.view(3, 3, 1, 1))


def _rgb_to_lab(rgb: Tensor) -> Tensor:
    """kornia's ``rgb_to_lab`` with the constants kept on the device: ``(B, 3, H, W)`` float sRGB in [0, 1] -> L*a*b*."""
    to_xyz, _ = _lab_constants(rgb.device, rgb.dtype)
    xyz = _apply_3x3(to_xyz, rgb_to_linear_rgb(rgb))  # already divided by the white point
    f = torch.where(xyz > _LAB_EPSILON, xyz.clamp(min=_LAB_EPSILON).pow(1 / 3.0), 7.787 * xyz + 4.0 / 29.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def _lab_to_rgb(lab: Tensor, clip: bool = True) -> Tensor:
    """kornia's ``lab_to_rgb`` with the constants kept on the device: ``(B, 3, H, W)`` L*a*b* -> sRGB."""
    _, to_rgb = _lab_constants(lab.device, lab.dtype)
    fy = (lab[:, 0] + 16.0) / 116.0
    fx = lab[:, 1] / 500.0 + fy
    fz = (fy - lab[:, 2] / 200.0).clamp(min=0.0)  # out of range: Z < 0
    f = torch.stack([fx, fy, fz], dim=1)
    xyz = torch.where(f > 0.2068966, f.pow(3.0), (f - 4.0 / 29.0) / 7.787)
    rgb = linear_rgb_to_rgb(_apply_3x3(to_rgb, xyz))
    return rgb.clamp(0.0, 1.0) if clip else rgb


def _check_image(name: str, x: Tensor, channels: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")


def _no_autocast(device: torch.device):
    """Float32 maths inside an autocast region; nothing to switch off on devices without
    autocast (``meta``, used to count FLOPs and shapes without computing)."""
    if device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """Convert sRGB in [0, 1] to CIE L*a*b*.

    Args:
        rgb: ``(B, 3, H, W)`` float sRGB in [0, 1].

    Returns:
        ``(B, 3, H, W)`` float32: L* in [0, 100], a* and b* in about [-128, 127].
    """
    _check_image("rgb", rgb, 3)
    if not rgb.is_floating_point():
        raise ValueError(f"rgb must be a float tensor in [0, 1], got dtype {rgb.dtype}; use rgb_uint8_to_lab_batch for uint8")
    with _no_autocast(rgb.device):
        return _rgb_to_lab(rgb.float())


def lab_to_rgb(lab: Tensor) -> Tensor:
    """Convert CIE L*a*b* to sRGB in [0, 1] (out-of-gamut colours are clipped).

    Args:
        lab: ``(B, 3, H, W)``: L* in [0, 100], a*, b* in about [-128, 127].

    Returns:
        ``(B, 3, H, W)`` float32 sRGB in [0, 1].
    """
    _check_image("lab", lab, 3)
    with _no_autocast(lab.device):
        return _lab_to_rgb(lab.float(), clip=True)


def normalize_l(l_star: Tensor) -> Tensor:
    """L* in [0, 100] -> [-1, 1]."""
    return l_star / L_SCALE - L_OFFSET / L_SCALE


def denormalize_l(l_norm: Tensor) -> Tensor:
    """[-1, 1] -> L* in [0, 100]."""
    return l_norm * L_SCALE + L_OFFSET


def normalize_ab(ab: Tensor) -> Tensor:
    """a*b* in about [-128, 127] -> a*b* / 110 (the sRGB gamut lies inside (-1, 1))."""
    return ab / AB_SCALE


def denormalize_ab(ab_norm: Tensor) -> Tensor:
    """a*b* / 110 -> a*b*."""
    return ab_norm * AB_SCALE


def merge_l_ab_to_rgb(l_norm: Tensor, ab_norm: Tensor) -> Tensor:
    """Merge normalized L* and a*b* and convert to sRGB.

    Args:
        l_norm: ``(B, 1, H, W)`` normalized L* (see module docs).
        ab_norm: ``(B, 2, H, W)`` normalized a*b*; same ``H, W`` as ``l_norm``.

    Returns:
        ``(B, 3, H, W)`` float32 sRGB in [0, 1].
    """
    _check_image("l_norm", l_norm, 1)
    _check_image("ab_norm", ab_norm, 2)
    if l_norm.shape[-2:] != ab_norm.shape[-2:] or l_norm.shape[0] != ab_norm.shape[0]:
        raise ValueError(f"l_norm {tuple(l_norm.shape)} and ab_norm {tuple(ab_norm.shape)} must agree in batch and size")
    with _no_autocast(l_norm.device):
        l_star = denormalize_l(l_norm.float()).clamp(0.0, 100.0)
        lab = torch.cat([l_star, denormalize_ab(ab_norm.float())], dim=1)
        return _lab_to_rgb(lab, clip=True)


def quantize_uint8(rgb: Tensor) -> Tensor:
    """Float sRGB in [0, 1] -> the same image rounded to 8 bits, as float in [0, 255].

    Metrics are computed on these values, the way images are saved and compared in
    the colorization and SR literature.
    """
    return (rgb.clamp(0.0, 1.0) * 255.0).round()


class LabBatch(dict):
    """A batch of named tensors made from reference images (a ``dict`` subclass).

    Keys:
        ``l_lowres``: ``(B, 1, r, r)`` normalized L* downscaled to the model input size.
        ``l_highres``: ``(B, 1, S, S)`` normalized L* of the reference image.
        ``ab_target``: ``(B, 2, S, S)`` normalized a*b* of the reference image.
        ``rgb_target``: ``(B, 3, S, S)`` uint8 reference image (what metrics compare with).
    """


def _lab_batch_tensors(rgb_uint8: Tensor, input_size: int, lowres_interpolation: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(l_lowres, l_highres, ab_target)``, normalized: the arithmetic of :func:`rgb_uint8_to_lab_batch`."""
    lab = _rgb_to_lab(rgb_uint8.float() / 255.0)
    l_star, ab = lab[:, :1], lab[:, 1:]
    if lowres_interpolation == "area":
        l_low = F.interpolate(l_star, size=(input_size, input_size), mode="area")
    else:
        l_low = F.interpolate(l_star, size=(input_size, input_size), mode=lowres_interpolation, align_corners=False, antialias=True)
    return normalize_l(l_low.clamp(0.0, 100.0)), normalize_l(l_star), normalize_ab(ab)


_compiled_lab_batch_tensors: Any = None


def _compiled_lab_tensors() -> Any:
    # Built on first use; torch.compile specializes on the batch shape, input size and
    # interpolation (a smaller last batch compiles once more).
    global _compiled_lab_batch_tensors
    if _compiled_lab_batch_tensors is None:
        _compiled_lab_batch_tensors = torch.compile(_lab_batch_tensors, dynamic=False)
    return _compiled_lab_batch_tensors


def rgb_uint8_to_lab_batch(rgb_uint8: Tensor, input_size: int, lowres_interpolation: str = "bicubic", compiled: bool = False) -> LabBatch:
    """Turn uint8 reference images into the network's input and targets.

    The paper's recipe: convert the reference image to L*a*b*, keep a*b* as the target at
    full size, and downscale L* to the model input size. Downscaling is antialiased (as
    PIL and MATLAB's ``imresize`` do); bicubic overshoot is clamped back to L* in [0, 100].

    Args:
        rgb_uint8: ``(B, 3, S, S)`` uint8 sRGB reference images.
        input_size: side ``r`` of the low-resolution L* input.
        lowres_interpolation: ``"bicubic"``, ``"bilinear"`` or ``"area"``.
        compiled: run the arithmetic through ``torch.compile`` (``speed.compile=true``): the
            two dozen elementwise kernels of the conversion fuse into a few; same values.

    Returns:
        A :class:`LabBatch`, all float32 except ``rgb_target``.
    """
    _check_image("rgb_uint8", rgb_uint8, 3)
    if rgb_uint8.dtype != torch.uint8:
        raise ValueError(f"rgb_uint8 must be uint8 (0..255), got {rgb_uint8.dtype}")
    if input_size < 1 or input_size > min(rgb_uint8.shape[-2:]):
        raise ValueError(f"input_size must be in [1, {min(rgb_uint8.shape[-2:])}] for images of size {tuple(rgb_uint8.shape[-2:])}, got {input_size}")
    if lowres_interpolation not in ("bicubic", "bilinear", "area"):
        raise ValueError(f"lowres_interpolation must be 'bicubic', 'bilinear' or 'area', got {lowres_interpolation!r}")
    convert = _compiled_lab_tensors() if compiled else _lab_batch_tensors
    _lab_constants(rgb_uint8.device, torch.float32)  # made outside torch.compile's trace: a constant of its graph
    with _no_autocast(rgb_uint8.device):
        l_low, l_high, ab = convert(rgb_uint8, input_size, lowres_interpolation)
    return LabBatch(
        l_lowres=l_low.contiguous(),
        l_highres=l_high.contiguous(),
        ab_target=ab.contiguous(),
        rgb_target=rgb_uint8,
    )


class RgbToLabBatch(nn.Module):
    """Module form of :func:`rgb_uint8_to_lab_batch` (no parameters)."""

    def __init__(self, input_size: int, lowres_interpolation: str = "bicubic") -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.lowres_interpolation = lowres_interpolation

    def forward(self, rgb_uint8: Tensor) -> LabBatch:
        return rgb_uint8_to_lab_batch(rgb_uint8, self.input_size, self.lowres_interpolation)


def resize_bicubic(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The suite's one bicubic resize: PIL's and MATLAB's ``imresize`` kernel (a = -0.5, antialiased).

    Every bicubic resize of an image in the suite goes through here: the networks' input
    residual and L* guide, the ``bicubic`` baseline, the "own L*" of nets without one, the
    figures and ``predict``. So an untrained residual net and the bicubic baseline deliver
    the same L* and the same Y-PSNR, and "super-resolution gain" never measures a kernel.

    torch's ``antialias=True`` bicubic is PIL's filter (measured: at most 7e-5 apart on the
    0..100 L* scale, up and down); torch's plain ``bicubic`` is OpenCV's (a = -0.75), up to
    10 L* units away. It stays differentiable and runs on the tensor's device.

    Args:
        x: ``(B, C, H, W)`` float tensor (any channels; the dtype is kept: bfloat16 and
            float16 are resized in float32, for which torch has the kernel).
        size: output ``(H', W')``.

    Returns:
        ``(B, C, H', W')``; ``x`` itself when it already has that size. Not clamped (bicubic
        overshoots slightly at edges).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dtype in (torch.bfloat16, torch.float16):
        # torch has no half-precision antialiased bicubic (CUDA and CPU: "compute_index_ranges_weights
        # not implemented for 'BFloat16'"): a bf16-mixed step resizes in float32 and goes on in its dtype.
        return F.interpolate(x.float(), size=tuple(size), mode="bicubic", align_corners=False, antialias=True).to(x.dtype)
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)


def resize_uint8(images: Tensor, size: tuple[int, int]) -> Tensor:
    """:func:`resize_bicubic` of uint8 images (0..255), rounded and clamped back to uint8.

    Args:
        images: ``(B, C, H, W)`` uint8 tensor.
        size: output ``(H', W')``.

    Returns:
        ``(B, C, H', W')`` uint8; ``images`` itself when it already has that size.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0..255), got {images.dtype}")
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return resize_bicubic(images.float(), size).round_().clamp_(0, 255).to(torch.uint8)


def upscale_l(l_lowres: Tensor, size: tuple[int, int]) -> Tensor:
    """Normalized L* resized by :func:`resize_bicubic` in float32, clamped to [-1, 1].

    The L* a model delivers when it predicts none (the bicubic baseline, protocol 2 and
    Y-PSNR of colorize-only nets) and the guide of ``residual_joint`` ``l_source=interpolated``.

    Args:
        l_lowres: ``(B, 1, r, r)`` normalized L* (in [-1, 1]).
        size: output ``(H, W)``.

    Returns:
        ``(B, 1, H, W)`` float32 normalized L* in [-1, 1].
    """
    with _no_autocast(l_lowres.device):
        return resize_bicubic(l_lowres.float(), size).clamp(-1.0, 1.0)
