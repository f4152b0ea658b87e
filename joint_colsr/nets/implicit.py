"""A continuous upsampler: a local implicit image function (LIIF) queried at any output size.

The joint nets normally end in a decoder built for one magnification. With
``upsampler=implicit`` they stop at a feature map at the *input* resolution, and this module
maps (latent feature, relative coordinate, cell size) to the output channels at every pixel
of any requested output grid: non-integer and anisotropic scales alike (Chen et al., "Learning
Continuous Image Representation with Local Implicit Image Function", CVPR 2021; SCSNet,
AAAI 2022, uses the same kind of mapping for joint colorization + super-resolution).

How a query is answered (LIIF's "local ensemble"): an output pixel centre falls between four
latent cells; each of the four predicts the output from its own feature, the query's offset
from its centre (in latent pixels) and the cell size (latent pixels per output pixel, the
inverse of the scale per axis); the four predictions are blended with bilinear weights, so
the output is continuous across cell borders.

Two exact rewrites keep it cheap (measured in ``model_table``, FLOPs per output size):

* The first MLP layer is linear in its inputs, so ``W1 @ [feature, offset, cell, guide]``
  is split: ``W1_f @ feature`` runs once per *latent* pixel (``h x w``, not ``H x W``) and is
  gathered; the offset, cell and guide terms are added after.
* An output grid is a product of a row grid and a column grid: which latent row and column
  each output pixel reads, its offsets and its blending weights are 1-D per axis; the gather
  is two ``index_select`` calls, no ``grid_sample``.

Optional ``guide`` channels at the output resolution (e.g. an L* guide) enter the first layer
per output pixel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from joint_colsr.nets.blocks import check_image


def axis_queries(n_out: int, n_in: int, device: torch.device | None = None) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per output row (or column): the two latent cells around its centre, its offsets and weights.

    Output pixel ``i`` of ``n_out`` has its centre at ``(i + 0.5) * n_in / n_out - 0.5`` in
    latent pixel units (``align_corners=False``, as every resize in the suite).

    Returns:
        ``[(index, offset, weight)]`` for the cell below and the cell above the centre: each a
        ``(n_out,)`` tensor; ``index`` (int64) clamped to ``[0, n_in - 1]``, ``offset`` = centre
        minus the cell's centre (latent pixels, float32), ``weight`` the linear blending weight
        (the two weights sum to 1).
    """
    if n_out < 1 or n_in < 1:
        raise ValueError(f"sizes must be positive, got n_out={n_out}, n_in={n_in}")
    centre = (torch.arange(n_out, device=device, dtype=torch.float32) + 0.5) * (n_in / n_out) - 0.5
    low = torch.floor(centre)
    frac = centre - low
    out = []
    for cell, weight in ((low, 1.0 - frac), (low + 1, frac)):
        index = cell.clamp(0, n_in - 1)
        out.append((index.long(), centre - index, weight))
    return out


class ImplicitUpsampler(nn.Module):
    """``(B, C, h, w)`` features (+ ``(B, G, H, W)`` guide) -> ``(B, out_channels, H, W)`` at any ``(H, W)``.

    Args:
        in_channels: channels ``C`` of the latent feature map.
        out_channels: output channels (2: a*b*; 3: L* residual + a*b*).
        hidden: width of the MLP's hidden layers.
        layers: hidden layers of the MLP (>= 1); each is a 1x1 convolution + LeakyReLU.
        guide_channels: channels ``G`` of an optional guide at the output resolution.
        negative_slope: LeakyReLU slope.

    The last layer starts at zero (an untrained model outputs 0: gray a*b*, the bicubic L*
    of a residual), as the suite's other heads do. The output is the raw blend; the caller
    applies its output activation.
    """

    def __init__(self, in_channels: int, out_channels: int = 2, hidden: int = 64, layers: int = 2,
                 guide_channels: int = 0, negative_slope: float = 0.2) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or hidden < 1 or layers < 1 or guide_channels < 0:
            raise ValueError(f"ImplicitUpsampler needs positive channels and layers >= 1, got in={in_channels}, "
                             f"out={out_channels}, hidden={hidden}, layers={layers}, guide={guide_channels}")
        self.in_channels, self.out_channels, self.hidden = in_channels, out_channels, hidden
        self.guide_channels = guide_channels
        self.feature_proj = nn.Conv2d(in_channels, hidden, 1)       # W1_f (+ the layer's bias), at latent resolution
        self.offset_proj = nn.Linear(2, hidden, bias=False)          # W1 on (dy, dx), latent pixels
        self.cell_proj = nn.Linear(2, hidden, bias=False)            # W1 on (h / H, w / W)
        self.guide_proj = nn.Conv2d(guide_channels, hidden, 1, bias=False) if guide_channels else None
        body: list[nn.Module] = [nn.LeakyReLU(negative_slope)]
        for _ in range(layers - 1):
            body += [nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(negative_slope)]
        self.body = nn.Sequential(*body)
        self.out = nn.Conv2d(hidden, out_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, feat: Tensor, out_hw: tuple[int, int], guide: Tensor | None = None) -> Tensor:
        """Query the output grid ``out_hw = (H, W)``: ``(B, out_channels, H, W)`` in ``feat``'s dtype."""
        check_image(feat, self.in_channels, "feat")
        out_h, out_w = int(out_hw[0]), int(out_hw[1])
        if out_h < 1 or out_w < 1:
            raise ValueError(f"output size must be positive, got {out_hw}")
        batch, _, in_h, in_w = feat.shape
        if self.guide_proj is not None:
            if guide is None:
                raise ValueError(f"this upsampler takes a {self.guide_channels}-channel guide at the output size")
            check_image(guide, self.guide_channels, "guide")
            if tuple(guide.shape[-2:]) != (out_h, out_w):
                raise ValueError(f"guide must be {(out_h, out_w)}, got {tuple(guide.shape[-2:])}")
        projected = self.feature_proj(feat)
        cell = torch.tensor([in_h / out_h, in_w / out_w], device=feat.device, dtype=self.cell_proj.weight.dtype)
        shared = self.cell_proj(cell).to(projected.dtype)[None, :, None, None]
        if self.guide_proj is not None:
            shared = shared + self.guide_proj(guide.to(projected.dtype))
        rows = axis_queries(out_h, in_h, feat.device)
        cols = axis_queries(out_w, in_w, feat.device)
        w_dy, w_dx = self.offset_proj.weight[:, 0], self.offset_proj.weight[:, 1]  # (hidden,)
        out = None
        for row_index, row_offset, row_weight in rows:
            by_row = projected.index_select(2, row_index)
            row_term = (w_dy[:, None] * row_offset[None, :]).to(projected.dtype)[None, :, :, None]
            for col_index, col_offset, col_weight in cols:
                z = by_row.index_select(3, col_index) + row_term + shared
                z = z + (w_dx[:, None] * col_offset[None, :]).to(projected.dtype)[None, :, None, :]
                prediction = self.out(self.body(z))
                weight = (row_weight[:, None] * col_weight[None, :]).to(prediction.dtype)
                out = prediction * weight if out is None else out + prediction * weight
        assert out is not None and out.shape == (batch, self.out_channels, out_h, out_w)
        return out

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, hidden={self.hidden}, guide={self.guide_channels}"


def output_hw_for(in_hw: tuple[int, int], scale: float | tuple[float, float] | None, out_hw: tuple[int, int] | None,
                  default_scale: float) -> tuple[int, int]:
    """The output ``(H, W)`` an any-scale net produces: ``out_hw`` when given, else the input
    scaled by ``scale`` (one factor or ``(sy, sx)``), else by ``default_scale``; rounded."""
    if out_hw is not None:
        height, width = int(out_hw[0]), int(out_hw[1])
        if height < 1 or width < 1:
            raise ValueError(f"output size must be positive, got {tuple(out_hw)}")
        return height, width
    factors = default_scale if scale is None else scale
    sy, sx = (factors, factors) if isinstance(factors, (int, float)) else factors
    return int(round(in_hw[0] * sy)), int(round(in_hw[1] * sx))


UPSAMPLERS = ("fixed", "implicit")


def check_upsampler(name: str) -> str:
    if name not in UPSAMPLERS:
        raise ValueError(f"upsampler must be one of {', '.join(UPSAMPLERS)}, got {name!r}")
    return name


__all__ = ["UPSAMPLERS", "ImplicitUpsampler", "axis_queries", "check_upsampler", "output_hw_for"]
