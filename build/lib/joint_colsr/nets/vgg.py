"""VGG19 feature extractor for the perceptual loss, loaded from a local weights file only.

The layout (and so the state-dict keys ``features.<i>.weight``) is torchvision's ``vgg19``,
so a torchvision ImageNet checkpoint loads as it is (its classifier keys are ignored); no
torchvision import and nothing downloaded. Layers are named ``conv<b>_<i>``,
``relu<b>_<i>`` and ``pool<b>``; SRGAN's "VGG54" loss is ``relu5_4``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

#: VGG19 (configuration "E"): channels per conv, "M" for a 2x2 max-pool.
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
#: ImageNet statistics the VGG weights expect (RGB in [0, 1] is normalized with them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_layer_names() -> list[str]:
    """Names of the modules of ``features``, in order (``conv1_1``, ``relu1_1``, ..., ``pool5``)."""
    names, block, conv = [], 1, 1
    for item in VGG19_LAYOUT:
        if item == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return names


class VGG19Features(nn.Module):
    """sRGB in [0, 1] -> VGG19 activations at ``layer`` (ImageNet normalization inside).

    Args:
        weights_path: a state dict file with torchvision's ``vgg19`` keys (``features.*``).
        layer: the last layer kept (default ``relu5_4``).

    Shapes:
        ``(B, 3, H, W) -> (B, C, H / 2^k, W / 2^k)``. The weights are frozen.
    """

    def __init__(self, weights_path: str | Path, layer: str = "relu5_4") -> None:
        super().__init__()
        names = vgg19_layer_names()
        if layer not in names:
            raise ValueError(f"perceptual layer must be one of {', '.join(names)}, got {layer!r}")
        modules: list[nn.Module] = []
        prev = 3
        for item in VGG19_LAYOUT:
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(prev, item, 3, padding=1), nn.ReLU(inplace=False)]
                prev = item
        self.features = nn.Sequential(*modules[: names.index(layer) + 1])
        self.layer = layer
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"perceptual_weights_path={path} is not a file (nothing is downloaded)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        wanted = self.state_dict()
        missing = [k for k in wanted if k not in state]
        if missing:
            raise ValueError(f"perceptual_weights_path={path} lacks {missing[:3]}...: expected torchvision vgg19 keys (features.<i>.weight/bias)")
        self.load_state_dict({k: state[k] for k in wanted})
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGG19Features:
        return super().train(False)  # a fixed feature extractor, always in eval mode

    def forward(self, rgb: Tensor) -> Tensor:
        """``(B, 3, H, W)`` sRGB in [0, 1] -> features at ``self.layer``."""
        return self.features((rgb - self.mean) / self.std)
