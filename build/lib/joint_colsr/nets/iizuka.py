"""``ic_only``: a colorization network after Iizuka, Simo-Serra and Ishikawa 2016 ("Let there be Color!").

Four parts, as in the paper (their Fig. 2 and Table 1; widths below are at ``width_mult=1``):

* **low-level features**, shared: six 3x3 convs (64 s2, 128, 128 s2, 256, 256 s2, 512), H/8;
* **mid-level features**: two 3x3 convs (512, 256) at H/8;
* **global features**: four 3x3 convs (512 s2, 512, 512 s2, 512) on the low-level features
  of the image *resized to* ``global_input_size`` (Iizuka: 224; here the task's input size),
  flattened, then fully connected 1024 -> 512 -> 256. Because the global path always sees
  that fixed size, the net runs on images of any size;
* **fusion**: the 256-d global vector is copied to every position of the mid-level map,
  concatenated, and mixed by a 1x1 conv to 256;
* **colorization decoder**: conv 128, x2 up, conv 64, conv 64, x2 up, conv 32, conv 2,
  x2 up (nearest), giving a*b* at the input resolution.

Optional **classification branch** (``classification=True``): fully connected 512 -> 256 ->
``num_classes`` from the global features' 512-d layer, returned as ``logits`` (Iizuka
trained it with cross-entropy on Places scene labels; here it is multi-label, COCO's
image-level categories, and the system applies a BCE loss with its own weight).

Deviations, for the joint task: every conv is followed by BatchNorm + ReLU except the
output, whose activation is ``tanh`` (a*b* normalized by 110) instead of a sigmoid, with the
output conv initialized at zero so the untrained net predicts gray like every net here.
For ``model=ic_only`` the a*b* are brought to the target size by ``output_resize``
(bicubic by default); with ``output_size == input_size`` (inside a cascade) there is no resize.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from joint_colsr.nets.blocks import (
    ConvBNAct,
    check_image,
    check_resize_mode,
    check_sizes,
    make_output_activation,
    resize,
    scaled_hw,
    scaled_width,
)

#: (filters, stride) of the low-level, mid-level and global convs (Iizuka et al. Table 1).
LOW_LEVEL = ((64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1))
MID_LEVEL = ((512, 1), (256, 1))
GLOBAL_CONVS = ((512, 2), (512, 1), (512, 2), (512, 1))
GLOBAL_FC = (1024, 512, 256)


def _conv_out(size: int, stride: int) -> int:
    return (size + 2 - 3) // stride + 1


class IizukaColorizer(nn.Module):
    """Low-resolution L* -> a*b* (at the input resolution, then resized to the target).

    Args:
        input_size: side of the input the net is built for.
        output_size: side of the a*b* output; ``== input_size`` for no resize.
        global_input_size: side the global-features path sees (default: ``input_size``).
        width_mult: multiplies every filter count except the 2 outputs and the classes.
        classification: add the classification branch and return ``logits``.
        num_classes: classes of that branch (COCO: 80 categories).
        output_resize: interpolation from the input resolution to the output size.
        output_activation: ``tanh`` | ``none``.
        in_channels: 1 (L*).

    Shapes:
        ``(B, 1, h, w) -> (B, 2, round(h * s), round(w * s))`` in [-1, 1] with
        ``s = output_size / input_size``; with ``classification`` a dict
        ``{"ab": ..., "logits": (B, num_classes)}``.
    """

    def __init__(
        self,
        input_size: int = 96,
        output_size: int = 256,
        global_input_size: int | None = None,
        width_mult: float = 1.0,
        classification: bool = False,
        num_classes: int = 80,
        output_resize: str = "bicubic",
        output_activation: str = "tanh",
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        check_sizes(input_size, output_size, minimum=8)
        self.input_size, self.output_size = int(input_size), int(output_size)
        self.scale = self.output_size / self.input_size
        self.global_input_size = int(global_input_size or input_size)
        if self.global_input_size < 32:
            raise ValueError(f"global_input_size must be >= 32 (the global path divides by 32), got {self.global_input_size}")
        if classification and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 with classification=true, got {num_classes}")
        self.output_resize = check_resize_mode(output_resize, "output_resize")
        self.in_channels = in_channels
        self.classification = classification
        def w(channels: int) -> int:
            return scaled_width(channels, width_mult)

        def convs(spec: tuple[tuple[int, int], ...], prev: int) -> tuple[nn.Sequential, int]:
            layers = []
            for filters, stride in spec:
                layers.append(ConvBNAct(prev, w(filters), stride=stride, negative_slope=0.0))
                prev = w(filters)
            return nn.Sequential(*layers), prev

        self.low_level, low_c = convs(LOW_LEVEL, in_channels)
        self.mid_level, mid_c = convs(MID_LEVEL, low_c)
        self.global_convs, glob_c = convs(GLOBAL_CONVS, low_c)
        side = self.global_input_size
        for _, stride in LOW_LEVEL + GLOBAL_CONVS:
            side = _conv_out(side, stride)
        fc1, fc2, fc3 = (w(c) for c in GLOBAL_FC)
        self.global_fc = nn.Sequential(
            nn.Flatten(), nn.Linear(glob_c * side * side, fc1), nn.ReLU(inplace=True),
            nn.Linear(fc1, fc2), nn.ReLU(inplace=True),
        )
        self.global_out = nn.Sequential(nn.Linear(fc2, fc3), nn.ReLU(inplace=True))
        if classification:
            self.classifier = nn.Sequential(nn.Linear(fc2, w(256)), nn.ReLU(inplace=True), nn.Linear(w(256), num_classes))
        self.fusion = ConvBNAct(mid_c + fc3, w(256), kernel_size=1, padding=0, negative_slope=0.0)
        self.decoder = nn.ModuleList([
            ConvBNAct(w(256), w(128), negative_slope=0.0),
            nn.Sequential(ConvBNAct(w(128), w(64), negative_slope=0.0), ConvBNAct(w(64), w(64), negative_slope=0.0)),
            ConvBNAct(w(64), w(32), negative_slope=0.0),
        ])
        self.head = nn.Conv2d(w(32), 2, 3, padding=1)
        self.head_activation = make_output_activation(output_activation)
        # Start from the gray prediction (a* = b* = 0), as every a*b* head in the suite.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, l_lowres: Tensor) -> Tensor | dict[str, Tensor]:
        """``(B, 1, h, w)`` normalized L* -> ``(B, 2, h * s, w * s)`` a*b* (dict with ``logits`` if classifying)."""
        check_image(l_lowres, self.in_channels)
        in_hw = tuple(l_lowres.shape[-2:])
        low = self.low_level(l_lowres)
        g_side = (self.global_input_size, self.global_input_size)
        low_global = low if in_hw == g_side else self.low_level(resize(l_lowres, g_side, "bilinear"))
        global_512 = self.global_fc(self.global_convs(low_global))
        global_vec = self.global_out(global_512)
        mid = self.mid_level(low)
        fused = torch.cat([mid, global_vec[:, :, None, None].expand(-1, -1, *mid.shape[-2:])], dim=1)
        x = self.fusion(fused)
        for i, layer in enumerate(self.decoder):
            x = layer(x)
            if i < 2:  # x2 nearest after conv 128 and after the two 64 convs
                x = resize(x, (2 * x.shape[-2], 2 * x.shape[-1]), "nearest")
        ab = resize(self.head_activation(self.head(x)), in_hw, "nearest")
        ab = resize(ab, scaled_hw(in_hw, self.scale), self.output_resize)
        if self.classification:
            return {"ab": ab, "logits": self.classifier(global_512)}
        return ab
