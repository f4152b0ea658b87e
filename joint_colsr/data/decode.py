"""Decoding image files into RGB uint8 arrays, robust to the files people really have.

Every function here runs in DataLoader worker processes: it returns plain numpy arrays
and raises :class:`ImageDecodeError` (with the file and the reason) for a file that
cannot be used, so the caller can skip and count it instead of crashing an epoch.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import warnings
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Extensions the folder and COCO sources consider images (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# Decompression-bomb guard stays on (PIL default), but as an error, not a warning.
warnings.simplefilter("error", Image.DecompressionBombWarning)


class SkipReason(str, Enum):
    """Why a photo was passed over. Recorded as text, ``"<reason>"`` or ``"<reason> (<detail>)"``
    (:meth:`describe`), in logs, skip reports and cache indexes; counted by reason (:meth:`of`)."""

    UNREADABLE = "cannot read file"
    EMPTY = "empty file"
    NOT_AN_IMAGE = "not an image PIL can identify"
    TOO_LARGE = "too large"
    CORRUPT = "corrupt or truncated"
    BAD_SHAPE = "decoded to an unexpected shape"
    BAD_HEADER = "unreadable header"
    TOO_SMALL = "too small"
    EXTREME_ASPECT = "extreme aspect ratio"
    GRAYSCALE = "grayscale"
    MISSING = "listed in the annotations but missing"
    BROKEN_LINK = "broken symbolic link"

    def __str__(self) -> str:
        return self.value

    def describe(self, detail: str = "") -> str:
        """The recorded text: ``"too small (8x8, shorter side < 16)"``."""
        return f"{self.value} ({detail})" if detail else self.value

    @classmethod
    def of(cls, text: str) -> "SkipReason | str":
        """The reason a recorded text states (the text itself when it is none of these)."""
        for reason in cls:
            if text == reason.value or text.startswith(reason.value + " ("):
                return reason
        return text


def count_reasons(texts: Iterable[str]) -> Counter[SkipReason | str]:
    """How many recorded skip texts state each :class:`SkipReason`."""
    return Counter(SkipReason.of(t) for t in texts)


class ImageDecodeError(Exception):
    """A file that is not a usable image. ``str(err)`` names the file and the reason;
    ``err.reason`` is the recorded text (:meth:`SkipReason.describe`), ``err.kind`` the reason."""

    def __init__(self, path: str | os.PathLike, kind: SkipReason, detail: str = "") -> None:
        self.path = str(path)
        self.kind = kind
        self.reason = kind.describe(detail)
        super().__init__(f"{self.path}: {self.reason}")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, keeping what the pixels mean."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: PIL's convert("L") clips at 255; rescale the real range instead.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite transparent pixels onto white, as viewers show them (convert("RGB") would make them black).
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's conversions are correct for these.
    return img.convert("RGB")


@functools.lru_cache(maxsize=16)
def _icc_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """A transform from the embedded profile to sRGB, or ``None`` when none is needed or possible.

    Built once per distinct profile (per worker process): photos of one camera share it.
    """
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = source.profile.xcolor_space.strip()
        if "srgb" in ImageCms.getProfileDescription(source).lower() or space != {"RGBA": "RGB"}.get(mode, mode):
            return None  # already sRGB (the common case), or a profile that does not describe these pixels
        return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), mode, "RGBA" if mode == "RGBA" else "RGB",
                                       renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    except (OSError, ImageCms.PyCMSError, ValueError, TypeError) as err:
        log.debug("ignoring an unusable ICC profile (%s)", err)
        return None  # a broken profile: keep the pixels as stored, as viewers do


def _to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """Pixels described by an embedded non-sRGB ICC profile (Adobe RGB, Display P3, a CMYK
    press profile) -> sRGB. Read as if they were sRGB, Adobe RGB photos come out washed out
    and P3 ones oversaturated: wrong colour targets for a colorizer."""
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK"):
        return img
    transform = _icc_transform(bytes(icc), img.mode)
    return img if transform is None else ImageCms.applyTransform(img, transform)


def _exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - malformed EXIF raises many kinds; the pixels are still fine
        return img


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an ``(H, W, 3)`` uint8 sRGB array.

    EXIF orientation is applied, an embedded ICC profile other than sRGB is converted to
    sRGB, transparency is composited on white, CMYK / palette / grayscale / 16-bit images are
    converted to 8-bit RGB, and for animated files the first frame is used.

    Raises:
        ImageDecodeError: the file is missing, empty, truncated, not an image, or too large.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageDecodeError(path, SkipReason.UNREADABLE, str(err.strerror or err)) from None
    if size == 0:
        raise ImageDecodeError(path, SkipReason.EMPTY, "0 bytes")
    try:
        with Image.open(path) as img:
            img.load()  # raises on truncated data (PIL's LOAD_TRUNCATED_IMAGES stays False)
            icc = img.info.get("icc_profile")
            img = _to_srgb(_exif_upright(img), icc)
            rgb = _to_rgb(img)
            arr = np.asarray(rgb, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ImageDecodeError(path, SkipReason.NOT_AN_IMAGE) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(path, SkipReason.TOO_LARGE, str(err)) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(path, SkipReason.CORRUPT, str(err)) from None
    except Exception as err:  # noqa: BLE001 - malformed files raise anything (struct.error, IndexError, ...)
        raise ImageDecodeError(path, SkipReason.CORRUPT, f"{type(err).__name__}: {err}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise ImageDecodeError(path, SkipReason.BAD_SHAPE, str(arr.shape))
    return np.ascontiguousarray(arr)


def is_effectively_grayscale(rgb: np.ndarray, tolerance: int = 2) -> bool:
    """True when an RGB image carries no colour: every channel equal within ``tolerance``.

    COCO stores about 1% grayscale photos, some as 3-channel RGB; they teach a colorizer
    nothing and are excluded from training and evaluation.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) array, got shape {rgb.shape}")
    x = rgb.astype(np.int16)
    return bool(np.abs(x[..., 0] - x[..., 1]).max() <= tolerance and np.abs(x[..., 1] - x[..., 2]).max() <= tolerance)


def size_reason(width: int, height: int, min_side: int = 16, max_aspect: float = 10.0) -> str | None:
    """Why a photo of this size should not become a reference image (too small, too
    elongated; see :func:`unusable_reason`), or ``None``. Needs only the header's size."""
    if min(height, width) < min_side:
        return SkipReason.TOO_SMALL.describe(f"{width}x{height}, shorter side < {min_side}")
    if max(height, width) > max_aspect * min(height, width):
        return SkipReason.EXTREME_ASPECT.describe(f"{width}x{height}, more than {max_aspect:g}:1")
    return None


def unusable_reason(rgb: np.ndarray, min_side: int = 16, max_aspect: float = 10.0, exclude_grayscale: bool = True) -> str | None:
    """Why a decoded photo should not become a reference image (the recorded text of a
    :class:`SkipReason`), or ``None`` when it is fine.

    Args:
        rgb: ``(H, W, 3)`` uint8 decoded image.
        min_side: smaller images carry too little detail to be a super-resolution target
            (images between this and the output size are upsampled).
        max_aspect: longer / shorter side above this (a banner, a scan strip) cannot be
            squash-resized or cropped into a square photo sensibly.
        exclude_grayscale: grayscale photos (also those stored as RGB) teach a colorizer nothing.
    """
    height, width = rgb.shape[:2]
    reason = size_reason(width, height, min_side, max_aspect)
    if reason is not None:
        return reason
    # A stride of 2 halves the cost on large photos; colour never hides on odd pixels only.
    view = rgb[::2, ::2] if min(height, width) >= 64 else rgb
    if exclude_grayscale and is_effectively_grayscale(view):
        return SkipReason.GRAYSCALE.describe()
    return None


def probe_image(path: str | os.PathLike) -> tuple[int, int]:
    """Cheap start-up check: open the header only and return ``(width, height)``.

    Catches missing, empty and non-image files without decoding pixels; truncated data is
    caught later, when the pixels are decoded (and the file is then skipped and counted).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(path, SkipReason.EMPTY, "0 bytes")
        with Image.open(path) as img:
            return img.size
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(path, SkipReason.NOT_AN_IMAGE) from None
    except Exception as err:  # noqa: BLE001 - malformed headers raise anything (struct.error, ...)
        raise ImageDecodeError(path, SkipReason.BAD_HEADER, f"{type(err).__name__}: {err}") from None
