"""Output scales of any-scale training: the configured range, each batch's draw, the labels.

With ``data.scale_range=[lo, hi]`` every training batch has one magnification ``s`` drawn
uniformly from ``[lo, hi]`` (the input stays ``data.input_size``; the target side is
``round(input_size * s)``), so a batch stays one tensor and a net sees every scale of the
range. The draw comes from the sample key of the batch's first sample (a counter-based hash,
:func:`joint_colsr.data.sampler.sample_uniforms`): the same batches get the same scales on
a resumed run (each path, photo files or cache, from its own sample keys), with no host read
of a device value.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from joint_colsr.data.sampler import sample_uniforms

#: The draw of a sample key that decides its batch's scale: far from the flip and box draws.
SCALE_DRAW = 1000


def scale_label(scale: float) -> str:
    """A scale as users write it and as metric keys carry it: ``2.0 -> "2"``, ``2.67 -> "2.67"``."""
    return format(float(scale), "g")


def target_side(input_size: int, scale: float) -> int:
    """Side of the target for an input of ``input_size`` at ``scale`` (rounded)."""
    return int(round(input_size * float(scale)))


def check_scales(scales: Sequence[float], key: str, input_size: int, output_size: int) -> tuple[float, ...]:
    """``scales`` as floats, each > 1 and reachable from a reference image of ``output_size``.

    Raises:
        ValueError: naming ``key`` and what was expected.
    """
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a list of numbers, got {scales!r}") from None
    if not values:
        raise ValueError(f"{key} must not be empty")
    for s in values:
        if not math.isfinite(s) or s <= 1.0:
            raise ValueError(f"{key}: every scale must be > 1 (an output larger than the input), got {s:g}")
        if target_side(input_size, s) > output_size:
            raise ValueError(
                f"{key}: scale {s:g} needs {target_side(input_size, s)}-pixel targets from a {input_size}-pixel input, "
                f"but data.output_size={output_size} (the reference images every target is resized down from): "
                f"set data.output_size>={math.ceil(input_size * s)} (and build a cache at that size)")
    return values


def check_scale_range(scale_range: Sequence[float], input_size: int, output_size: int) -> tuple[float, float]:
    """``[lo, hi]`` with ``1 < lo <= hi`` and ``round(input_size * hi) <= output_size``."""
    if isinstance(scale_range, (str, bytes)) or len(scale_range) != 2:
        raise ValueError(f"data.scale_range must be [min, max] scales, got {scale_range!r}")
    low, high = check_scales(scale_range, "data.scale_range", input_size, output_size)
    if low > high:
        raise ValueError(f"data.scale_range must be [min, max] with min <= max, got [{low:g}, {high:g}]")
    return low, high


def scale_uniform(key: int) -> float:
    """The uniform in [0, 1) that sample key ``key`` gives its batch's scale."""
    return float(sample_uniforms(np.array([int(key) % 2**64], np.uint64), 1, first=SCALE_DRAW)[0, 0])


def scale_from_uniform(u: float, scale_range: tuple[float, float]) -> float:
    low, high = scale_range
    return low + float(u) * (high - low)


__all__ = ["SCALE_DRAW", "check_scale_range", "check_scales", "scale_from_uniform", "scale_label", "scale_uniform", "target_side"]
