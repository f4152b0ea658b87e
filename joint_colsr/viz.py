"""Pictures: labelled image grids of validation and evaluation results.

Every grid names its columns in a title strip above them, and each row carries its metric
(written on a dark strip at the top of one of its images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from joint_colsr.color import merge_l_ab_to_rgb, quantize_uint8, upscale_l

#: Column titles of the validation grid (:func:`colorization_rows`).
VALIDATION_COLUMNS = ("input L* (bicubic upscaled)", "prediction (GT L* + pred. a*b*)", "ground truth")
#: Column titles of an evaluation row (:func:`evaluation_row`).
EVALUATION_COLUMNS = ("input L* (bicubic upscaled)", "GT L* + pred. a*b*", "own L* + pred. a*b*", "ground truth")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable
    except TypeError:
        return ImageFont.load_default()


def make_grid(rows: list[list[Tensor]], padding: int = 2, pad_value: int = 255,
              column_titles: list[str] | tuple[str, ...] | None = None, title_height: int = 18) -> np.ndarray:
    """Tile images into one ``(H, W, 3)`` uint8 array, with a title above each column.

    Args:
        rows: ``rows[i][j]`` is a ``(3, h, w)`` uint8 (or [0, 255] float) tensor; all same size.
        column_titles: one title per column (drawn in a white strip above the images), or ``None``.
        title_height: height of the title strip in pixels.
    """
    if not rows or not rows[0]:
        raise ValueError("make_grid needs at least one image")
    _, h, w = rows[0][0].shape
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    if column_titles is not None and len(column_titles) != n_cols:
        raise ValueError(f"{len(column_titles)} column titles for {n_cols} columns")
    top = title_height if column_titles else 0
    canvas = np.full((top + n_rows * (h + padding) + padding, n_cols * (w + padding) + padding, 3), pad_value, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            if tuple(img.shape) != (3, h, w):
                raise ValueError(f"grid image ({i}, {j}) has shape {tuple(img.shape)}, expected {(3, h, w)}")
            y, x = top + padding + i * (h + padding), padding + j * (w + padding)
            canvas[y : y + h, x : x + w] = img.detach().cpu().float().clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
    if column_titles:
        pil = Image.fromarray(canvas)
        draw, font = ImageDraw.Draw(pil), _font(max(8, title_height - 5))
        for j, title in enumerate(column_titles):
            x0 = padding + j * (w + padding)
            width = draw.textlength(title, font=font)
            draw.text((x0 + max(0.0, (w - width) / 2), 2), title, fill=(0, 0, 0), font=font)
        canvas = np.asarray(pil).copy()
    return canvas


def colorization_rows(l_lowres: Tensor, l_highres: Tensor, ab_pred: Tensor, rgb_target: Tensor, limit: int = 8) -> list[list[Tensor]]:
    """Rows of ``[input L* upscaled (bicubic) | prediction (GT L* + predicted a*b*) | ground truth]``
    (titles: :data:`VALIDATION_COLUMNS`); each row's first image is captioned with the
    prediction's PSNR and that of the gray image (a* = b* = 0, GT L*), the floor it must beat.

    Shapes as in :class:`joint_colsr.color.LabBatch`; ``ab_pred`` is ``(B, 2, S, S)``.
    """
    from joint_colsr.metrics import colorization_psnr

    n = min(limit, l_lowres.shape[0])
    with torch.no_grad(), torch.autocast(device_type=l_lowres.device.type, enabled=False):
        size = rgb_target.shape[-2:]
        l_up = upscale_l(l_lowres[:n], tuple(size))
        # The neutral colour of each upscaled L* (a* = b* = 0), i.e. what a gray image looks like.
        gray = quantize_uint8(merge_l_ab_to_rgb(l_up, torch.zeros_like(l_up).repeat(1, 2, 1, 1)))
        pred = quantize_uint8(merge_l_ab_to_rgb(l_highres[:n].float(), ab_pred[:n].float()))
        target = rgb_target[:n].float()
        psnr = colorization_psnr(l_highres[:n].float(), ab_pred[:n].float(), rgb_target[:n])
        psnr_gray = colorization_psnr(l_highres[:n].float(), torch.zeros_like(ab_pred[:n]).float(), rgb_target[:n])
    return [[caption(gray[i], f"PSNR pred {float(psnr[i]):.2f} | gray {float(psnr_gray[i]):.2f} dB"), pred[i], target[i]]
            for i in range(n)]


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Save an ``(H, W, 3)`` uint8 array as PNG, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def caption(image: Tensor, text: str, height: int = 16) -> Tensor:
    """A copy of ``image`` (``(3, h, w)``, [0, 255]) with ``text`` on a dark strip at its top."""
    arr = image.detach().cpu().float().clamp(0, 255).round().byte().permute(1, 2, 0).numpy().copy()
    pil = Image.fromarray(arr)
    draw = ImageDraw.Draw(pil)
    draw.rectangle((0, 0, pil.width, min(height, pil.height)), fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255), font=_font(max(8, height - 4)))
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def evaluation_row(l_lowres: Tensor, rgb: Tensor, rgb_joint: Tensor, rgb_target: Tensor, text: str = "") -> list[Tensor]:
    """One row of an evaluation figure: ``[input L* (bicubic, gray) | GT L* + predicted a*b* |
    the model's own L* + predicted a*b* | ground truth]`` (titles: :data:`EVALUATION_COLUMNS`),
    ``text`` (the row's metrics) written on the first.

    Args:
        l_lowres: ``(1, r, r)`` normalized input L*.
        rgb, rgb_joint, rgb_target: ``(3, S, S)`` in [0, 255].

    Returns:
        four ``(3, S, S)`` uint8 CPU tensors, each with storage of its own (:func:`own_uint8`).
    """
    l_up = upscale_l(l_lowres[None].float(), tuple(rgb_target.shape[-2:]))
    gray = quantize_uint8(merge_l_ab_to_rgb(l_up, torch.zeros_like(l_up).repeat(1, 2, 1, 1)))[0]
    first = caption(gray, text) if text else gray
    return [own_uint8(image) for image in (first, rgb, rgb_joint, rgb_target)]


def own_uint8(image: Tensor) -> Tensor:
    """``image`` (``(3, h, w)``, [0, 255], any dtype and device) as a uint8 CPU tensor with
    storage of its own: an image kept for a figure must not be a view that holds its whole
    batch in memory. The pixels are those :func:`make_grid` would draw."""
    image = image.detach()
    if image.dtype != torch.uint8:
        image = image.float().clamp(0, 255).round().to(torch.uint8)
    return image.to("cpu").clone(memory_format=torch.contiguous_format)
