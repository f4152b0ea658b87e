"""SRGAN's VGG-style discriminator (Ledig et al. 2017, Fig. 4), for ``model=srgan``.

Eight 3x3 convs (64, 64 s2, 128, 128 s2, 256, 256 s2, 512, 512 s2), LeakyReLU(0.2), BatchNorm
after all but the first, then dense 1024 -> LeakyReLU -> dense 1 (a logit). SRGAN flattens a
fixed 96x96 crop; here an average pool to 4x4 before the dense layers makes it take any image
size (256x256 here) at a fixed parameter count. The pool is a plain ``avg_pool2d`` whenever the
feature map divides into equal bins (256 -> 16x16 features -> 4x4 bins of 4x4), the same means
as ``AdaptiveAvgPool2d`` but with a deterministic CUDA backward (adaptive pooling's backward
has none: ``trainer.deterministic=true`` would refuse it); adaptive pooling otherwise.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from joint_colsr.nets.blocks import check_image, scaled_width

#: (filters, stride) of the discriminator's convs.
DISCRIMINATOR_CONVS = ((64, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 2))


class BinAveragePool(nn.Module):
    """``AdaptiveAvgPool2d(size)`` computed as ``avg_pool2d`` when the input divides into equal bins.

    Shapes: ``(B, C, H, W) -> (B, C, size, size)``; equal to ``adaptive_avg_pool2d`` (a test checks).
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if height % self.size == 0 and width % self.size == 0:
            return F.avg_pool2d(x, (height // self.size, width // self.size))
        return F.adaptive_avg_pool2d(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class VGGDiscriminator(nn.Module):
    """Image -> realness logit.

    Args:
        in_channels: channels of the images judged (3: normalized L*a*b*).
        width_mult: multiplies every filter count and the dense width.
        pool_size: side of the pool before the dense layers (:class:`BinAveragePool`).

    Shapes:
        ``(B, in_channels, H, W) -> (B,)`` logits (``H, W >= 16``).
    """

    def __init__(self, in_channels: int = 3, width_mult: float = 1.0, pool_size: int = 4) -> None:
        super().__init__()
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        prev = in_channels
        for i, (filters, stride) in enumerate(DISCRIMINATOR_CONVS):
            c = scaled_width(filters, width_mult)
            layers.append(nn.Conv2d(prev, c, 3, stride=stride, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            prev = c
        self.features = nn.Sequential(*layers)
        dense = scaled_width(1024, width_mult)
        self.classifier = nn.Sequential(
            BinAveragePool(pool_size), nn.Flatten(),
            nn.Linear(prev * pool_size * pool_size, dense), nn.LeakyReLU(0.2, inplace=True), nn.Linear(dense, 1),
        )

    def forward(self, image: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B,)`` logits."""
        check_image(image, self.in_channels, "image")
        return self.classifier(self.features(image)).squeeze(1)
