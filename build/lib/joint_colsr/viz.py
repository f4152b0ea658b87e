"""Pictures: image grids of validation results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from joint_colsr.color import merge_l_ab_to_rgb, quantize_uint8


def make_grid(rows: list[list[Tensor]], padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile images into one ``(H, W, 3)`` uint8 array.

    Args:
        rows: ``rows[i][j]`` is a ``(3, h, w)`` uint8 (or [0, 255] float) tensor; all same size.
    """
    if not rows or not rows[0]:
        raise ValueError("make_grid needs at least one image")
    _, h, w = rows[0][0].shape
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    canvas = np.full((n_rows * (h + padding) + padding, n_cols * (w + padding) + padding, 3), pad_value, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            if tuple(img.shape) != (3, h, w):
                raise ValueError(f"grid image ({i}, {j}) has shape {tuple(img.shape)}, expected {(3, h, w)}")
            y, x = padding + i * (h + padding), padding + j * (w + padding)
            canvas[y : y + h, x : x + w] = img.detach().cpu().float().clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
    return canvas


def colorization_rows(l_lowres: Tensor, l_highres: Tensor, ab_pred: Tensor, rgb_target: Tensor, limit: int = 8) -> list[list[Tensor]]:
    """Rows of ``[input L* upscaled (bicubic) | prediction (GT L* + predicted a*b*) | ground truth]``.

    Shapes as in :class:`joint_colsr.color.LabBatch`; ``ab_pred`` is ``(B, 2, S, S)``.
    """
    n = min(limit, l_lowres.shape[0])
    with torch.no_grad(), torch.autocast(device_type=l_lowres.device.type, enabled=False):
        size = rgb_target.shape[-2:]
        l_up = F.interpolate(l_lowres[:n].float(), size=size, mode="bicubic", align_corners=False)
        # The neutral colour of each upscaled L* (a* = b* = 0), i.e. what a gray image looks like.
        gray = quantize_uint8(merge_l_ab_to_rgb(l_up.clamp(-1, 1), torch.zeros_like(l_up).repeat(1, 2, 1, 1)))
        pred = quantize_uint8(merge_l_ab_to_rgb(l_highres[:n].float(), ab_pred[:n].float()))
        target = rgb_target[:n].float()
    return [[gray[i], pred[i], target[i]] for i in range(n)]


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Save an ``(H, W, 3)`` uint8 array as PNG, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def caption(image: Tensor, text: str, height: int = 14) -> Tensor:
    """A copy of ``image`` (``(3, h, w)``, [0, 255]) with ``text`` on a dark strip at its top."""
    from PIL import ImageDraw

    arr = image.detach().cpu().float().clamp(0, 255).round().byte().permute(1, 2, 0).numpy().copy()
    pil = Image.fromarray(arr)
    draw = ImageDraw.Draw(pil)
    draw.rectangle((0, 0, pil.width, min(height, pil.height)), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255))
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def evaluation_row(l_lowres: Tensor, rgb: Tensor, rgb_joint: Tensor, rgb_target: Tensor, text: str = "") -> list[Tensor]:
    """One row of an evaluation figure: ``[input L* (bicubic, gray) | GT L* + predicted a*b* |
    the model's own L* + predicted a*b* | ground truth]``, ``text`` written on the first.

    Args:
        l_lowres: ``(1, r, r)`` normalized input L*.
        rgb, rgb_joint, rgb_target: ``(3, S, S)`` in [0, 255].
    """
    from joint_colsr.metrics import upscale_l

    l_up = upscale_l(l_lowres[None].float(), tuple(rgb_target.shape[-2:]))
    gray = quantize_uint8(merge_l_ab_to_rgb(l_up, torch.zeros_like(l_up).repeat(1, 2, 1, 1)))[0]
    first = caption(gray, text) if text else gray
    return [first, rgb.float(), rgb_joint.float(), rgb_target.float()]
