"""Training geometry on the model's device: flips and crops of whole batches.

The cache path gathers cached images as they are stored and ships, with each batch, the
per-sample parameters drawn on the host from the sample keys (``flip``: a ``(B,)`` bool
tensor; ``boxes``: a ``(B, 4)`` int64 numpy array, kept on the host because cropping needs
Python integers and reading a device tensor would wait for the device).
:meth:`ColSRDataModule.on_after_batch_transfer` applies them with :func:`augment` before
the LAB conversion, so the CPU never resamples an image on the cache path.

The resize is the suite's one bicubic (:func:`joint_colsr.color.resize_bicubic`: torch's
antialiased bicubic, PIL's filter) of a crop at whole-pixel edges; the file path resizes
PIL's fractional boxes instead (docs/data.md says how far apart the two are).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from joint_colsr.color import resize_bicubic


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")


def hflip(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror the samples of a batch whose ``flip`` is true (left-right).

    Args:
        images: ``(B, C, H, W)`` tensor, any dtype and device.
        flip: ``(B,)`` bool tensor on the same device.

    Returns:
        ``(B, C, H, W)``, same dtype; a new tensor (``images`` is not written).
    """
    _check_images(images)
    if flip.dtype != torch.bool or tuple(flip.shape) != (images.shape[0],):
        raise ValueError(f"flip must be a ({images.shape[0]},) bool tensor, got {flip.dtype} {tuple(flip.shape)}")
    if flip.device != images.device:
        raise ValueError(f"flip is on {flip.device}, images on {images.device}")
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def crop_resize(images: Tensor, boxes: np.ndarray, size: int) -> Tensor:
    """Crop each sample to its box and resize it to ``size x size`` with :func:`resize_bicubic`.

    Crops of equal size are resized together (one call per distinct crop size).

    Args:
        images: ``(B, C, H, W)`` uint8 (0..255) or float tensor.
        boxes: ``(B, 4)`` integer ``(left, top, right, bottom)`` in whole pixels,
            ``0 <= left < right <= W`` and ``0 <= top < bottom <= H`` (host array).
        size: output side (>= 1).

    Returns:
        ``(B, C, size, size)`` in the dtype of ``images`` (uint8: rounded and clamped to
        0..255), on the device of ``images``.
    """
    _check_images(images)
    boxes = np.asarray(boxes)
    if boxes.shape != (images.shape[0], 4) or not np.issubdtype(boxes.dtype, np.integer):
        raise ValueError(f"boxes must be ({images.shape[0]}, 4) integers, got {boxes.dtype} {boxes.shape}")
    height, width = images.shape[-2:]
    left, top, right, bottom = boxes.T
    if len(boxes) and ((left < 0).any() or (top < 0).any() or (right > width).any() or (bottom > height).any()
                       or (right <= left).any() or (bottom <= top).any()):
        raise ValueError(f"boxes must lie inside the {width}x{height} images with positive sides, got {boxes.tolist()}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    out = torch.empty((*images.shape[:2], size, size), dtype=images.dtype, device=images.device)
    sizes = np.stack([bottom - top, right - left], axis=1)
    for crop_size in np.unique(sizes, axis=0):
        members = np.flatnonzero((sizes == crop_size).all(axis=1))
        crops = torch.stack([images[i, :, top[i]:bottom[i], left[i]:right[i]] for i in members.tolist()])
        resized = resize_bicubic(crops.float(), (size, size))
        if images.dtype == torch.uint8:
            resized = resized.round_().clamp_(0, 255)
        if len(members) == 1:  # random crops: mostly one per size; no index tensor to move
            out[int(members[0])] = resized[0].to(images.dtype)
        else:
            out[torch.from_numpy(members).to(images.device)] = resized.to(images.dtype)
    return out


def augment(images: Tensor, size: int, flip: Tensor | None = None, boxes: np.ndarray | None = None) -> Tensor:
    """A batch's training geometry: crop+resize to ``size`` (when ``boxes``), then the flips (when ``flip``).

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
        images = crop_resize(images, boxes, size)
    elif tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"images are {tuple(images.shape[-2:])} without boxes to crop them to {size}x{size}")
    if flip is not None:
        images = hflip(images, flip)
    return images


__all__ = ["augment", "crop_resize", "hflip"]
