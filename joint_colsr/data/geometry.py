"""Training geometry on the model's device: flips and crops of whole batches.

The cache path gathers cached images as they are stored and ships, with each batch, the
per-sample parameters drawn on the host from the sample keys (``flip``: a ``(B,)`` bool
tensor; ``boxes``: a ``(B, 4)`` int64 tensor, checked on the host when drawn). Both live in
the loader's (pinned, when a GPU trains) ring buffer and travel to the device with the
images in Lightning's transfer. :meth:`ColSRDataModule.on_after_batch_transfer` applies them
with :func:`augment` before the LAB conversion, so the CPU never resamples an image on the
cache path.

**One batch, a fixed number of kernels.** The resize is the suite's one bicubic
(:func:`joint_colsr.color.resize_bicubic`: torch's antialiased bicubic, PIL's filter) of a
crop at whole-pixel edges, written as two batched matrix products::

    out[b, c] = Wy[b] @ image[b, c] @ Wx[b]^T

``Wy[b]`` (``size x H``) is zero outside the crop's rows and holds, inside, the weights
that ``resize_bicubic`` gives a signal of the crop's height resized to ``size``; ``Wx[b]``
the same for columns, with its rows reversed when the sample is flipped (the flip costs
nothing). The weights are the kernel's own: ``resize_bicubic`` of an identity matrix, once
per side length ``1..H`` and output size, kept per device as bands of a few taps
(:func:`_weight_bank`). A batch then costs 45 aten calls on the host (a test counts them
at batch 16 and 256) and no host read, whatever its size and however many crop sizes it
holds: no loop per sample or per crop size, and the boxes are never read back on the host
(nothing waits for the device).

Cost: ``B * C * size * W * (H + size)`` float32 multiply-adds (97 GFLOP at batch 256,
384-pixel images, 256 output: a few ms at a current GPU's tens of float32 TFLOP/s, not yet
timed on one; on a CPU slower than resizing each crop alone: docs/data.md), and at peak about
``B * 4 * (C*H*W + C*size*W + 2*size*(H + taps))`` bytes (~1.0 GB at that batch: the
float32 copy of the images dominates). The products run in full float32 whatever
``torch.set_float32_matmul_precision`` says (TF32's 10-bit mantissa would move many uint8
results by a level).
Against ``resize_bicubic`` of each crop the results differ only by float32 rounding
(summation order); the file path resizes PIL's fractional boxes instead (docs/data.md says
how far apart the two are).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from joint_colsr.color import resize_bicubic


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")


def _check_flip(images: Tensor, flip: Tensor) -> None:
    if not isinstance(flip, Tensor) or flip.dtype != torch.bool or tuple(flip.shape) != (images.shape[0],):
        raise ValueError(f"flip must be a ({images.shape[0]},) bool tensor, got {getattr(flip, 'dtype', type(flip))} "
                         f"{tuple(getattr(flip, 'shape', ()))}")
    if flip.device != images.device:
        raise ValueError(f"flip is on {flip.device}, images on {images.device}")


def check_boxes(boxes: np.ndarray, count: int, width: int, height: int) -> np.ndarray:
    """Check host crop boxes: ``(count, 4)`` integer ``(left, top, right, bottom)`` inside a
    ``width x height`` image with positive sides. Returns them as an int64 array.

    Raises:
        ValueError: naming what was expected.
    """
    boxes = np.asarray(boxes)
    if boxes.shape != (count, 4) or not np.issubdtype(boxes.dtype, np.integer):
        raise ValueError(f"boxes must be ({count}, 4) integers, got {boxes.dtype} {boxes.shape}")
    left, top, right, bottom = boxes.T
    if len(boxes) and ((left < 0).any() or (top < 0).any() or (right > width).any() or (bottom > height).any()
                       or (right <= left).any() or (bottom <= top).any()):
        raise ValueError(f"boxes must lie inside the {width}x{height} images with positive sides, got {boxes.tolist()}")
    return boxes.astype(np.int64, copy=False)


def hflip(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror the samples of a batch whose ``flip`` is true (left-right).

    Args:
        images: ``(B, C, H, W)`` tensor, any dtype and device.
        flip: ``(B,)`` bool tensor on the same device.

    Returns:
        ``(B, C, H, W)``, same dtype; a new tensor (``images`` is not written).
    """
    _check_images(images)
    _check_flip(images, flip)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


@functools.lru_cache(maxsize=16)
def _weight_bank(length: int, size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """:func:`resize_bicubic`'s weights for resizing a signal of every length ``n`` in
    ``1..length`` to ``size``, as bands (built on ``device`` once, then cached).

    Returns:
        ``band``: ``(length + 1, size, taps)`` float32: output pixel ``j`` of a length-``n``
        signal is ``sum_k band[n, j, k] * signal[start[n, j] + k]`` (positions past ``n``
        carry weight 0); ``start``: ``(length + 1, size)`` int64. Row ``n = 0`` is unused.
        ``taps`` bounds the kernel's support: ``4 * max(length / size, 1) + 1`` pixels
        (antialiased bicubic spans 2 output pixels each side), plus one spare. 8 MB at
        length 640, size 256.
    """
    taps = math.floor(4 * max(length / size, 1.0)) + 2
    band = torch.zeros(length + 1, size, taps, device=device)
    start = torch.zeros(length + 1, size, dtype=torch.int64, device=device)
    offsets = torch.arange(taps, device=device)
    for n in range(1, length + 1):
        # n one-hot signals of length n, each resized to size: row i is input pixel i's weight
        # in every output pixel, so the transpose is the (size, n) weight matrix, exact.
        eye = torch.eye(n, device=device).view(n, 1, 1, n)
        weights = resize_bicubic(eye, (1, size)).reshape(n, size).T
        first = (weights != 0).to(torch.uint8).argmax(1)  # the support's first pixel (argmax: first maximum)
        band[n] = F.pad(weights, (0, taps)).gather(1, first[:, None] + offsets)
        start[n] = first
    return band, start


def _resize_matrices(band: Tensor, start: Tensor, lengths: Tensor, offsets: Tensor, extent: int,
                     reverse: Tensor | None) -> Tensor:
    """``(B, size, extent)`` float32: row ``j`` of sample ``b`` resizes pixels ``offsets[b]``
    to ``offsets[b] + lengths[b]`` (of ``extent``) to output pixel ``j``, or ``size - 1 - j``
    where ``reverse[b]`` (a flip). ``lengths``, ``offsets``: ``(B,)`` int64 on the bank's device."""
    count, size, taps = len(lengths), band.shape[1], band.shape[2]
    rows = torch.arange(size, device=band.device).expand(count, size)
    if reverse is not None:
        rows = torch.where(reverse[:, None], size - 1 - rows, rows)
    lengths = lengths[:, None]
    first = start[lengths, rows] + offsets[:, None]  # (B, size): each row's first pixel in the image
    # Each row's taps go to distinct columns (scatter_ without reduction: nothing collides); the
    # spare columns past the image take taps past the crop, which weigh 0.
    dense = torch.zeros(count, size, extent + taps, device=band.device)
    dense.scatter_(2, first[:, :, None] + torch.arange(taps, device=band.device), band[lengths, rows])
    return dense[:, :, :extent]


@contextlib.contextmanager
def _float32_products(device: torch.device) -> Iterator[None]:
    """Full float32 matrix products: no TF32 (``set_float32_matmul_precision``, or torch >= 2.9's
    per-backend ``fp32_precision``) and no autocast; the settings are restored after."""
    restore = contextlib.ExitStack()
    try:
        before = torch.get_float32_matmul_precision()
        if before != "highest":
            torch.set_float32_matmul_precision("highest")
            restore.callback(torch.set_float32_matmul_precision, before)
    except RuntimeError:  # torch >= 2.9 refuses the global setting once a backend's own was set: use that
        backend = torch.backends.cuda.matmul if device.type == "cuda" else torch.backends.mkldnn.matmul
        restore.callback(setattr, backend, "fp32_precision", backend.fp32_precision)
        backend.fp32_precision = "ieee"
    with restore:
        if device.type in ("cuda", "cpu"):
            restore.enter_context(torch.autocast(device.type, enabled=False))
        yield


def _device_boxes(boxes: Tensor | np.ndarray, images: Tensor) -> Tensor:
    """``boxes`` as a ``(B, 4)`` int64 tensor on the device of ``images``. Host arrays are
    checked; a tensor only for its shape and dtype (reading its values back would wait for
    the device, or, for a CPU tensor, read as that wait in the CPU trace of the sync check:
    the loader checks its boxes on the host when it draws them)."""
    count, _, height, width = images.shape
    if isinstance(boxes, Tensor):
        if tuple(boxes.shape) != (count, 4) or boxes.dtype != torch.int64:
            raise ValueError(f"boxes must be a ({count}, 4) int64 tensor, got {boxes.dtype} {tuple(boxes.shape)}")
        if boxes.device == images.device:
            return boxes
        if boxes.device.type != "cpu":
            raise ValueError(f"boxes are on {boxes.device}, images on {images.device}")
        host = boxes
    else:
        host = torch.from_numpy(np.ascontiguousarray(check_boxes(boxes, count, width, height)))
    if images.device.type == "cpu":
        return host
    # A pinned, asynchronous copy: the host goes on without waiting (the caching host
    # allocator keeps the pinned block until the copy is done).
    return host.pin_memory().to(images.device, non_blocking=True)


def crop_resize(images: Tensor, boxes: Tensor | np.ndarray, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop each sample to its box, resize it to ``size x size`` with :func:`resize_bicubic`'s
    weights, and mirror it where ``flip``: the whole batch at once (see the module docstring).

    Args:
        images: ``(B, C, H, W)`` uint8 (0..255) or float tensor.
        boxes: ``(B, 4)`` integer ``(left, top, right, bottom)`` in whole pixels,
            ``0 <= left < right <= W`` and ``0 <= top < bottom <= H``: an int64 tensor (on the
            device of ``images``, or on the CPU: then copied there, pinned; its values are
            trusted: see :func:`check_boxes`), or a host array (checked).
        size: output side (>= 1).
        flip: ``(B,)`` bool tensor on the device of ``images`` (mirror those samples
            left-right after resizing), or None.

    Returns:
        ``(B, C, size, size)`` in the dtype of ``images`` (uint8: rounded and clamped to
        0..255), on the device of ``images``. Equal to ``resize_bicubic`` of each crop up to
        float32 rounding (for uint8, rarely a level apart where a value lies at .5).
    """
    _check_images(images)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if flip is not None:
        _check_flip(images, flip)
    boxes = _device_boxes(boxes, images)
    count, channels, height, width = images.shape
    device = images.device
    if count == 0:
        return images.new_empty((0, channels, size, size))
    left, top, right, bottom = boxes.unbind(1)
    wy = _resize_matrices(*_weight_bank(height, size, device), bottom - top, top, height, None)  # (B, size, H)
    wx = _resize_matrices(*_weight_bank(width, size, device), right - left, left, width, flip)  # (B, size, W)
    with _float32_products(device):
        # (B, H, C, W) float32, so that one product per sample resizes every channel's columns.
        pixels = torch.empty((count, height, channels, width), dtype=torch.float32, device=device)
        pixels.copy_(images.permute(0, 2, 1, 3))
        columns = torch.bmm(wy, pixels.view(count, height, channels * width))  # (B, size, C*W): rows resized
        del pixels
        out = torch.bmm(columns.view(count, size * channels, width), wx.transpose(1, 2))  # (B, size*C, size)
    out = out.view(count, size, channels, size).permute(0, 2, 1, 3)
    if images.dtype == torch.uint8:
        out = out.round_().clamp_(0, 255)
    return out.to(images.dtype, memory_format=torch.contiguous_format)


def augment(images: Tensor, size: int, flip: Tensor | None = None, boxes: Tensor | np.ndarray | None = None) -> Tensor:
    """A batch's training geometry: crop+resize to ``size`` (when ``boxes``) and the flips (when ``flip``).

    Args:
        images: ``(B, C, H, W)`` uint8 tensor; without ``boxes`` ``H = W = size``.
        size: output side.
        flip: ``(B,)`` bool tensor on the device of ``images``, or None (no flips).
        boxes: ``(B, 4)`` integer whole-pixel boxes (see :func:`crop_resize`), or None.

    Returns:
        ``(B, C, size, size)``; ``images`` itself when there is nothing to do.
    """
    _check_images(images)
    if boxes is not None:
        return crop_resize(images, boxes, size, flip)  # the flips ride in the resize for free
    if tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"images are {tuple(images.shape[-2:])} without boxes to crop them to {size}x{size}")
    if flip is not None:
        images = hflip(images, flip)
    return images


__all__ = ["augment", "check_boxes", "crop_resize", "hflip"]
