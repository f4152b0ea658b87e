"""How far our protocol 1 is from Zhang et al.'s script (richzhang/colorization-pytorch), on one folder.

Two differences, measured on the gray floor (ground-truth L*, a* = b* = 0), all else equal:
their script converts *both* images back from L*a*b* and truncates each to 8 bits
(``tensor2im``: ``astype(uint8)``) where we round the prediction and score it against the
photo's own pixels, and it resizes the reference bilinearly where we use antialiased
bicubic (PIL's kernels).

    python experiments/zhang_protocol.py DIR      # DIR: a folder of PNG/JPEG photos (e.g. Kodak24)

Prints the mean PSNR for each of the four combinations; docs/results.md quotes the Kodak24 run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from joint_colsr.color import merge_l_ab_to_rgb, rgb_uint8_to_lab_batch
from joint_colsr.data.decode import IMAGE_EXTENSIONS
from joint_colsr.metrics import psnr_uint8


def gray_floor(root: Path, kernel: str, quantize: str) -> float:
    values = []
    for path in sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
        img = Image.open(path).convert("RGB").resize((256, 256), getattr(Image.Resampling, kernel.upper()))
        rgb = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None]
        batch = rgb_uint8_to_lab_batch(rgb, 96)
        image = merge_l_ab_to_rgb(batch["l_highres"], torch.zeros_like(batch["ab_target"])).clamp(0, 1) * 255
        if quantize == "round":  # ours: the prediction rounded, against the photo's own 8-bit pixels
            values.append(float(psnr_uint8(image.round(), rgb)))
        else:  # theirs: both images through the Lab round trip, then astype(uint8) (truncation) of each
            reference = merge_l_ab_to_rgb(batch["l_highres"], batch["ab_target"]).clamp(0, 1) * 255
            values.append(float(psnr_uint8(image.floor(), reference.floor())))
    if not values:
        raise SystemExit(f"no images in {root}")
    return float(np.mean(values))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    folder = Path(sys.argv[1]).expanduser()
    for kernel in ("bicubic", "bilinear"):
        for quantize in ("round", "truncate"):
            print(f"reference resize {kernel:8s}, 8-bit {quantize:8s}: gray floor {gray_floor(folder, kernel, quantize):.3f} dB")
