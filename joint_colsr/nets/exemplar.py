"""``joint_exemplar``: the residual joint net, steered by an exemplar photo when it has one.

The paper's task is ``f(x, x_ref)``; SCSNet (AAAI 2022) serves an automatic and a referential
mode from one network. This net is :class:`~joint_colsr.nets.residual_joint.ResidualJointNet`
(its trunk, its upsampler: fixed or implicit, its L* guide) with an exemplar fusion between
the trunk and the upsampler:

* **Keys from the same trunk.** The exemplar's L* (resized to the input's size) goes through
  the *same* head and trunk as the input: source and exemplar features live in one feature
  space, and correspondence is found on luminance structure alone, whatever the colours.
* **Values from the colours.** A small value encoder (three 3x3 convs) reads the exemplar's
  full L*a*b* at the input's size.
* **Cross-attention at two scales.** Level 1: the trunk's features average-pooled by 4
  (queries) attend to the exemplar's, pooled by 4 (keys, values); level 2: pooled by 2
  attend to pooled by 4 (finer queries, the same keys). ``heads`` heads of
  ``attention_width / heads`` channels each (``F.scaled_dot_product_attention``). At the
  default 96-pixel input: 24x24 = 576 queries x 576 keys and 48x48 = 2304 x 576, i.e. 1.66 M
  attention weights per image and head (6.6 MB in float32): bounded by the input size, not
  by the output's or the exemplar's.
* **A residual, off at the start.** Each level's result returns to the trunk's grid
  (each value repeated over the cells it pooled: deterministic on CUDA), goes through a 1x1 conv that starts at zero, and is added to the trunk's
  features, times ``exemplar_mask``: an untrained net ignores exemplars, and a sample without
  one (automatic mode) runs exactly the residual joint net's computation on the same weights.

The network contract: ``forward(l_lowres, l_highres=None, out_hw=None, exemplar=None,
exemplar_mask=None)``; ``takes_exemplar = True`` tells :func:`joint_colsr.systems.call_net`
to pass the batch's exemplar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from joint_colsr.color import resize_bicubic
from joint_colsr.nets.blocks import scaled_width
from joint_colsr.nets.residual_joint import ResidualJointNet

#: (query pooling, key/value pooling) of the two attention levels.
LEVELS: tuple[tuple[int, int], ...] = ((4, 4), (2, 4))


def _repeat_to(x: Tensor, factor: int, size: tuple[int, int]) -> Tensor:
    """Nearest upsampling by an integer ``factor`` (each value repeated ``factor x factor``),
    cropped to ``size``: an ``expand`` + ``reshape``, whose backward is a plain sum, deterministic
    on CUDA (interpolation's backward is not: ``trainer.deterministic=true`` would refuse it)."""
    if factor == 1:
        return x[..., : size[0], : size[1]]
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(b, c, h, factor, w, factor).reshape(b, c, h * factor, w * factor)[..., : size[0], : size[1]]


def _pool(x: Tensor, factor: int) -> Tensor:
    """Average over ``factor x factor`` cells (a partial cell at the border averages what it holds)."""
    return F.avg_pool2d(x, factor, ceil_mode=True) if factor > 1 else x


class ExemplarAttention(nn.Module):
    """One level of source -> exemplar cross-attention (see the module docs).

    Shapes:
        ``source (B, C, h, w)``, ``keys (B, C, h', w')``, ``values (B, V, h', w')`` ->
        ``(B, C, h, w)`` (zero at initialization).
    """

    def __init__(self, channels: int, value_channels: int, width: int, heads: int, query_pool: int, key_pool: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"attention_width ({width}) must be a multiple of heads ({heads})")
        self.heads, self.query_pool, self.key_pool = heads, query_pool, key_pool
        self.query = nn.Conv2d(channels, width, 1)
        self.key = nn.Conv2d(channels, width, 1)
        self.value = nn.Conv2d(value_channels, width, 1)
        self.out = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _tokens(self, x: Tensor) -> Tensor:  # (B, W, h, w) -> (B, heads, h*w, W / heads)
        b, c, h, w = x.shape
        return x.reshape(b, self.heads, c // self.heads, h * w).transpose(2, 3)

    def forward(self, source: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        q_in, k_in, v_in = _pool(source, self.query_pool), _pool(keys, self.key_pool), _pool(values, self.key_pool)
        q = self._tokens(self.query(q_in))
        attended = F.scaled_dot_product_attention(q, self._tokens(self.key(k_in)), self._tokens(self.value(v_in)))
        b, _, h, w = q_in.shape
        grid = attended.transpose(2, 3).reshape(b, -1, h, w)
        return _repeat_to(self.out(grid), self.query_pool, tuple(source.shape[-2:]))


class ExemplarJointNet(ResidualJointNet):
    """Low-resolution L* (+ an optional exemplar) -> high-resolution a*b* (and L*).

    Args:
        exemplar_width: channels of the exemplar value encoder (times ``width_mult``).
        attention_width: channels of the queries, keys and values (times ``width_mult``,
            rounded to a multiple of ``heads``).
        heads: attention heads.
        others: see :class:`~joint_colsr.nets.residual_joint.ResidualJointNet` (its
            ``l_source``, ``upsampler`` ...).

    Shapes:
        ``l_lowres (B, 1, h, w)``, ``exemplar (B, 3, E, E)`` normalized L*a*b* (L*/50 - 1,
        a*b*/110; any ``E``: resized to ``(h, w)``) or None, ``exemplar_mask (B,)`` bool
        (which samples have one; default: all) -> as ``ResidualJointNet`` (a dict with ``ab``
        and ``l`` unless ``l_source="gt"``).
    """

    takes_exemplar = True

    def __init__(self, *args, exemplar_width: int = 64, attention_width: int = 64, heads: int = 4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        mult = kwargs.get("width_mult", 1.0)
        channels = self.trunk_tail[0].out_channels
        v = scaled_width(exemplar_width, mult)
        width = max(heads, scaled_width(attention_width, mult) // heads * heads)
        self.value_encoder = nn.Sequential(
            nn.Conv2d(3, v, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(v, v, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(v, v, 3, padding=1),
        )
        self.fusion = nn.ModuleList([ExemplarAttention(channels, v, width, heads, qp, kp) for qp, kp in LEVELS])

    def forward(self, l_lowres: Tensor, l_highres: Tensor | None = None, out_hw: tuple[int, int] | None = None,
                exemplar: Tensor | None = None, exemplar_mask: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        """See the class docs; ``exemplar=None`` (or a mask of all False) is automatic mode."""
        out_hw = self._check_call(l_lowres, l_highres, out_hw)
        feat = self.trunk_features(l_lowres)
        if exemplar is not None:
            feat = feat + self.exemplar_residual(feat, l_lowres, exemplar, exemplar_mask)
        elif self.training and torch.is_grad_enabled():
            # A training batch without exemplars: the exemplar-only parameters join the graph with
            # weight zero, so DDP (find_unused_parameters=False) still finds a gradient for each.
            feat = feat + 0.0 * sum(p.sum() for p in (*self.value_encoder.parameters(), *self.fusion.parameters()))
        return self._decode(feat, l_lowres, l_highres, out_hw)

    def exemplar_residual(self, feat: Tensor, l_lowres: Tensor, exemplar: Tensor, exemplar_mask: Tensor | None) -> Tensor:
        """What the exemplar adds to the trunk's features ``(B, C, h, w)`` (zero where the mask is False)."""
        if exemplar.dim() != 4 or exemplar.shape[1] != 3 or exemplar.shape[0] != l_lowres.shape[0]:
            raise ValueError(f"exemplar must be ({l_lowres.shape[0]}, 3, E, E) normalized L*a*b*, got {tuple(exemplar.shape)}")
        if exemplar_mask is not None and tuple(exemplar_mask.shape) != (l_lowres.shape[0],):
            raise ValueError(f"exemplar_mask must be ({l_lowres.shape[0]},) bool, got {tuple(exemplar_mask.shape)}")
        small = resize_bicubic(exemplar.to(feat.dtype), tuple(l_lowres.shape[-2:]))
        keys = self.trunk_features(small[:, :1].clamp(-1, 1))
        values = self.value_encoder(small)
        residual = sum(level(feat, keys, values) for level in self.fusion)
        if exemplar_mask is not None:
            residual = residual * exemplar_mask.to(residual.dtype)[:, None, None, None]
        return residual


__all__ = ["LEVELS", "ExemplarAttention", "ExemplarJointNet"]
