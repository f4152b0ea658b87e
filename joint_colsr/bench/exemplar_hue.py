"""Is the exemplar used? ``python -m joint_colsr.bench.exemplar_hue [--seeds 0 1] [--steps 300]``.

A synthetic task where colour cannot be read from L*: every training photo gets a random global
hue rotation (a*b* rotated, L* kept) that its ``warped_self`` exemplar shares. A tiny
``joint_exemplar`` (32 channels, 2 blocks, 32 -> 64 pixels, 30 % of the samples without an
exemplar) trains ``--steps`` steps of 8 on the embedded photos; the same weights are then scored
on the two held-out photos at 8 hue rotations with the exemplar (``warped_gt``) and without
(automatic mode): mean GT-L* PSNR of each. Writes ``benchmarks/exemplar_hue.json``.
``tests/test_exemplar.py`` runs :func:`hue_check` and asks for a gain above 0.7 dB.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from joint_colsr.color import lab_to_rgb, rgb_to_lab


def hue_rotated(rgb: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 images with their a*b* rotated by ``angles`` ``(B,)`` radians (L* kept)."""
    lab = rgb_to_lab(rgb.float() / 255)
    cos, sin = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
    a, b = lab[:, 1], lab[:, 2]
    return (lab_to_rgb(torch.stack([lab[:, 0], cos * a - sin * b, sin * a + cos * b], 1)).clamp(0, 1) * 255).round().to(torch.uint8)


def hue_check(seed: int = 0, steps: int = 300) -> dict[str, float]:
    """Train the tiny exemplar net on hue-rotated photos; ``{"exemplar", "automatic", "gain"}`` in dB."""
    from joint_colsr.data import ColSRDataModule, SamplePhotos
    from joint_colsr.metrics import colorization_psnr
    from joint_colsr.nets import ExemplarJointNet
    from joint_colsr.systems import call_net

    torch.manual_seed(seed)
    dm = ColSRDataModule(SamplePhotos(), batch_size=8, num_workers=0, input_size=32, output_size=64, train_samples_per_epoch=64,
                         exemplar="warped_self", exemplar_drop=0.3, exemplar_size=64, val_exemplar="warped_gt", seed=seed)
    dm.setup("fit")
    net = ExemplarJointNet(32, 64, width=32, blocks=2, exemplar_width=16, attention_width=32, heads=4)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    hues = torch.Generator().manual_seed(seed)
    step = 0
    while step < steps:
        for batch in dm.train_dataloader():
            batch["rgb"] = hue_rotated(batch["rgb"], torch.rand(len(batch["rgb"]), generator=hues) * 2 * math.pi)
            lab = dm.on_after_batch_transfer(batch, 0)  # the exemplar is warped from the rotated photo
            out = call_net(net, lab["l_lowres"], None, None, lab["exemplar"], lab["exemplar_mask"])
            loss = F.mse_loss(out["ab"], lab["ab_target"]) + F.mse_loss(out["l"], lab["l_highres"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    net.eval()
    scores: dict[str, list[float]] = {"exemplar": [], "automatic": []}
    validation = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        for k in range(8):
            angles = torch.full((len(validation["rgb"]),), 2 * math.pi * (k + 0.5) / 8)
            lab = dm.on_after_batch_transfer({**validation, "rgb": hue_rotated(validation["rgb"], angles)}, 0)
            for mode, exemplar in (("exemplar", lab["exemplar"]), ("automatic", None)):
                ab = call_net(net, lab["l_lowres"], None, None, exemplar, lab["exemplar_mask"])["ab"]
                scores[mode] += colorization_psnr(lab["l_highres"], ab, lab["rgb_target"]).tolist()
    result = {mode: float(np.mean(values)) for mode, values in scores.items()}
    return {**result, "gain": result["exemplar"] - result["automatic"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks") / "exemplar_hue.json")
    args = parser.parse_args(argv)
    record = {"command": "python -m joint_colsr.bench.exemplar_hue", "steps": args.steps,
              "seeds": {str(seed): hue_check(seed, args.steps) for seed in args.seeds}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
