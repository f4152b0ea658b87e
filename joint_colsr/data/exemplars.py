"""Exemplars: the colour photo that steers an exemplar-guided model (the paper's ``x_ref``).

The suite says "reference" for the ground-truth photo a sample is made from; the photo that
steers the colours is the **exemplar**. Which exemplar a sample gets is a pure function of its
sample key (a counter-based hash, as crops and scales are), so a resumed run gives every
sample the same exemplar (the photo-file and the cache path each draw from their own sample
keys, as their crops do); a validation sample's exemplar depends on its index alone:

* ``warped_self`` (training) / ``warped_gt`` (evaluation): the sample's own reference image,
  geometrically warped (a random affine map: rotation, zoom, shear, shift; with
  ``warp="tps"``, training only, a thin-plate spline through a jittered 4x4 grid of control
  points composed before it, so straight lines bend; one resampling, colours unchanged), so
  a model must find correspondences instead of copying pixels. In evaluation it is always
  the affine warp and carries the target's colours: an upper bound, never ranked beside
  blind rows;
* ``same_category``: another photo of the same split sharing a supercategory (COCO labels);
  a photo whose supercategories no other photo shares gets a ``random`` one;
* ``random``: any other photo of the split (never the sample's own);
* ``mix`` (training): each sample one of the above, uniformly (``same_category`` only when
  the source has categories);
* ``none``: no exemplar (automatic mode).

``drop`` (``data.exemplar_drop``) leaves a sample without an exemplar with that probability,
so one model learns both modes. The plan (:meth:`ExemplarPlan.plan`) runs on the host; the
warp and the resize to ``data.exemplar_size`` run on the model's device
(:func:`exemplar_batch`).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_points_tps
from torch import Tensor

from joint_colsr.color import resize_uint8, rgb_uint8_to_lab_batch
from joint_colsr.data.sampler import sample_uniforms

#: ``data.exemplar`` (training) and ``data.val_exemplar`` / eval ``exemplar=`` (evaluation).
TRAIN_EXEMPLARS = ("none", "warped_self", "same_category", "random", "mix")
EVAL_EXEMPLARS = ("none", "warped_gt", "same_category", "random")
#: What each sample got: no exemplar, its own warped image, another photo.
NONE, WARPED, OTHER = 0, 1, 2
#: Mixed into a sample key before its exemplar draws: independent of its crop, flip and scale draws.
_SALT = np.uint64(0xE8E3_7A1D_5C0F_B2A9)
#: Warp ranges: rotation (degrees), zoom (log-uniform), shear, shift (fractions of the side).
MAX_ROTATION, ZOOM, MAX_SHEAR, MAX_SHIFT = 20.0, (0.8, 1.25), 0.15, 0.15
#: ``data.exemplar_warp``: the affine map alone, or a thin-plate spline composed before it.
WARPS = ("affine", "tps")
#: The thin-plate spline's control points: a ``TPS_GRID`` x ``TPS_GRID`` grid over the central
#: 3/4 of the exemplar (``affine_grid`` coordinates), each moved by up to ``MAX_TPS_SHIFT``
#: of the side in x and y.
TPS_GRID, MAX_TPS_SHIFT = 4, 0.05
_AFFINE_DRAWS = 8  # uniforms per sample before the spline's (adding draws keeps earlier ones)


class ExemplarPlan:
    """Which exemplar each sample of a split gets.

    Args:
        kind: one of :data:`TRAIN_EXEMPLARS` or :data:`EVAL_EXEMPLARS` (``warped_gt`` is
            ``warped_self`` on an evaluation split).
        num_photos: photos of the split (sample ``i`` shows photo ``photos[i]``).
        groups: per photo, the names of its groups (COCO supercategories); needed by
            ``same_category`` (and used by ``mix`` when given).
        drop: probability that a sample gets no exemplar.
        warp: one of :data:`WARPS`: how ``warped_self`` samples are warped.

    Raises:
        ValueError: an unknown kind or warp, a drop outside [0, 1], ``same_category`` without
            groups, or another-photo exemplars on a split of one photo.
    """

    def __init__(self, kind: str, num_photos: int, groups: Sequence[Sequence[str]] | None = None, drop: float = 0.0,
                 warp: str = "affine") -> None:
        if warp not in WARPS:
            raise ValueError(f"data.exemplar_warp must be one of {', '.join(WARPS)}, got {warp!r}")
        if kind not in (*TRAIN_EXEMPLARS, *EVAL_EXEMPLARS):
            raise ValueError(f"exemplar must be one of {', '.join(dict.fromkeys((*TRAIN_EXEMPLARS, *EVAL_EXEMPLARS)))}, got {kind!r}")
        if not 0.0 <= float(drop) <= 1.0:
            raise ValueError(f"data.exemplar_drop must be in [0, 1], got {drop}")
        has_groups = groups is not None and any(groups)
        if kind == "same_category" and not has_groups:
            raise ValueError("exemplar=same_category needs photos with categories (data=coco): this source has none")
        if kind in ("same_category", "random", "mix") and num_photos < 2:
            raise ValueError(f"exemplar={kind} needs another photo of the split, and it holds {num_photos}")
        self.kind = "warped_self" if kind == "warped_gt" else kind
        self.num_photos = int(num_photos)
        self.drop = float(drop)
        self.warp = warp
        self.groups = [sorted(set(g)) for g in groups] if has_groups else None
        self._members: dict[str, np.ndarray] = {}
        if self.groups is not None:
            by_group: dict[str, list[int]] = {}
            for photo, names in enumerate(self.groups):
                for name in names:
                    by_group.setdefault(name, []).append(photo)
            self._members = {name: np.asarray(photos, np.int64) for name, photos in by_group.items()}

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def plan(self, photos: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(kinds, others, thetas, bends)`` of samples showing ``photos`` with sample keys ``keys``.

        Returns:
            ``kinds``: ``(B,)`` int8 (:data:`NONE`, :data:`WARPED`, :data:`OTHER`); ``others``:
            ``(B,)`` int64 photo of each ``OTHER`` exemplar (-1 elsewhere; never the sample's
            own photo); ``thetas``: ``(B, 2, 3)`` float32 affine maps of the warp (output ->
            input coordinates, ``F.affine_grid``'s convention), drawn for every sample;
            ``bends``: ``(B, TPS_GRID**2, 2)`` float32 control-point shifts of the spline
            (:func:`tps_shifts`) with ``warp="tps"``, else None.
        """
        photos = np.asarray(photos, np.int64)
        keys = np.asarray(keys, np.uint64) ^ _SALT
        with np.errstate(over="ignore"):
            u = sample_uniforms(keys, _AFFINE_DRAWS)
        count = len(photos)
        kinds = np.full(count, NONE, np.int8)
        others = np.full(count, -1, np.int64)
        if self.kind != "none":
            choice = self.kind
            for i in range(count):
                if u[i, 0] < self.drop:
                    continue
                if self.kind == "mix":
                    options = ("warped_self", "same_category", "random") if self.groups else ("warped_self", "random")
                    choice = options[min(int(u[i, 1] * len(options)), len(options) - 1)]
                if choice == "warped_self":
                    kinds[i] = WARPED
                    continue
                kinds[i] = OTHER
                others[i] = self._other(int(photos[i]), choice, u[i, 2], u[i, 3])
        bends = None
        if self.warp == "tps":
            with np.errstate(over="ignore"):
                bends = tps_shifts(sample_uniforms(keys, 2 * TPS_GRID**2, first=_AFFINE_DRAWS))
        return kinds, others, warp_thetas(u[:, 3:8]), bends

    def _other(self, photo: int, choice: str, u: float, v: float) -> int:
        if choice == "same_category" and self.groups[photo]:
            name = self.groups[photo][min(int(v * len(self.groups[photo])), len(self.groups[photo]) - 1)]
            members = self._members[name]
            if len(members) > 1:
                pick = min(int(u * (len(members) - 1)), len(members) - 2)
                own = int(np.searchsorted(members, photo))
                return int(members[pick + (pick >= own)])  # every member but the photo itself
        pick = min(int(u * (self.num_photos - 1)), self.num_photos - 2)
        return pick + (pick >= photo)


def warp_thetas(u: np.ndarray) -> np.ndarray:
    """``(B, 5)`` uniforms -> ``(B, 2, 3)`` float32 affine maps: rotation, log-uniform zoom,
    shear and shift within :data:`MAX_ROTATION`, :data:`ZOOM`, :data:`MAX_SHEAR`, :data:`MAX_SHIFT`."""
    angle = np.deg2rad((2 * u[:, 0] - 1) * MAX_ROTATION)
    zoom = np.exp(np.log(ZOOM[0]) + u[:, 1] * (np.log(ZOOM[1]) - np.log(ZOOM[0])))
    shear = (2 * u[:, 2] - 1) * MAX_SHEAR
    shift = (2 * u[:, 3:5] - 1) * 2 * MAX_SHIFT  # affine_grid spans [-1, 1]: a side is 2 units
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    theta = np.zeros((len(u), 2, 3), np.float32)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos, -sin + shear, shift[:, 0]
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin, cos, shift[:, 1]
    return theta


def tps_shifts(u: np.ndarray) -> np.ndarray:
    """``(B, 2K)`` uniforms -> ``(B, K, 2)`` float32 control-point shifts within
    :data:`MAX_TPS_SHIFT` of the side (``affine_grid`` units: a side is 2), ``K = TPS_GRID**2``."""
    return ((2 * u - 1) * 2 * MAX_TPS_SHIFT).reshape(len(u), TPS_GRID**2, 2).astype(np.float32)


def tps_control_points(device: torch.device | str | None = None) -> Tensor:
    """``(K, 2)`` the spline's control points ``(x, y)``: a :data:`TPS_GRID` square grid over
    ``[-0.75, 0.75]`` (``affine_grid`` coordinates)."""
    ticks = torch.linspace(-0.75, 0.75, TPS_GRID, device=device)
    y, x = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=-1)


@functools.lru_cache(maxsize=8)
def _tps_solver(device: str) -> tuple[Tensor, Tensor]:
    """``(centres, solver)`` float32 on ``device``: the ``(K, 2)`` control points
    (:func:`tps_control_points`) and the ``(K + 3, K)`` matrix with which the thin-plate spline
    through them is ``[kernel weights; affine weights] = solver @ targets`` (kornia's
    ``warp_points_tps`` layout). The spline's system depends on the control points alone, so
    it is inverted once (float64, on the CPU) and each batch is one product: kornia's
    ``get_tps_transform`` solves per call with ``torch.linalg.solve``, whose error check waits
    for the device on CUDA (a host sync in every training step)."""
    centres = tps_control_points().double()
    count = len(centres)
    squared = ((centres[:, None] - centres[None]) ** 2).sum(-1)
    kernel = torch.where(squared > 0, 0.5 * squared * torch.where(squared > 0, squared, 1.0).log(), 0.0)  # r^2 log r
    affine = torch.cat([torch.ones(count, 1, dtype=torch.float64), centres], 1)
    system = torch.cat([torch.cat([kernel, affine], 1), torch.cat([affine.T, torch.zeros(3, 3, dtype=torch.float64)], 1)], 0)
    return tps_control_points(device), torch.linalg.inv(system)[:, :count].float().to(device)


def warp_grid(theta: Tensor, size: int, bends: Tensor | None = None) -> Tensor:
    """``(B, size, size, 2)`` sampling grid (``F.grid_sample``, ``align_corners=False``) of the
    warp ``theta`` ``(B, 2, 3)`` (output -> input), with ``bends`` ``(B, K, 2)`` first: the
    thin-plate spline (evaluated by kornia's ``warp_points_tps``) that moves control point
    ``k`` (:func:`tps_control_points`) by ``bends[:, k]`` and bends least between them; zero
    bends are the affine map alone (up to float round-off). No host sync on any device."""
    theta = theta.to(torch.float32)
    if bends is None:
        return F.affine_grid(theta, [theta.shape[0], 3, size, size], align_corners=False)
    identity = torch.eye(2, 3, device=theta.device).expand(theta.shape[0], 2, 3)
    points = F.affine_grid(identity, [theta.shape[0], 3, size, size], align_corners=False).reshape(theta.shape[0], -1, 2)
    centres, solver = _tps_solver(str(theta.device))
    centres = centres.expand(theta.shape[0], -1, -1)
    weights = solver @ (centres + bends.to(theta.device, torch.float32))
    bent = warp_points_tps(points, centres, weights[:, : centres.shape[1]], weights[:, centres.shape[1]:])
    return (bent @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]).reshape(theta.shape[0], size, size, 2)


def warp_images(rgb: Tensor, theta: Tensor, size: int, bends: Tensor | None = None) -> Tensor:
    """Warp uint8 images by per-sample affine maps, optionally bent by a thin-plate spline
    first (:func:`warp_grid`; bilinear, reflected at the borders).

    Args:
        rgb: ``(B, 3, H, W)`` uint8.
        theta: ``(B, 2, 3)`` float affine maps (output -> input, ``F.affine_grid``).
        size: output side.
        bends: ``(B, K, 2)`` control-point shifts of the spline (:func:`tps_shifts`), or None.

    Returns:
        ``(B, 3, size, size)`` uint8 (colours resampled, not changed).
    """
    if rgb.dtype != torch.uint8 or rgb.dim() != 4:
        raise ValueError(f"rgb must be (B, 3, H, W) uint8, got {rgb.dtype} {tuple(rgb.shape)}")
    images = rgb.float()
    if min(rgb.shape[-2:]) > 2 * size:  # shrink first: bilinear sampling alone would alias
        images = resize_uint8(rgb, (2 * size, 2 * size)).float()
    grid = warp_grid(theta.to(images.device), size, bends)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return warped.round_().clamp_(0, 255).to(torch.uint8)


def exemplar_batch(rgb: Tensor, kinds: Tensor, theta: Tensor, others: Tensor | None, size: int,
                   bends: Tensor | None = None) -> dict[str, Tensor]:
    """The exemplars of a batch on its device: normalized L*a*b* and which samples have one.

    Args:
        rgb: ``(B, 3, S, S)`` uint8 reference images (what ``WARPED`` samples warp).
        kinds: ``(B,)`` int8 :data:`NONE` / :data:`WARPED` / :data:`OTHER`.
        theta: ``(B, 2, 3)`` warps.
        others: ``(B, 3, T, T)`` uint8 other photos (rows of non-``OTHER`` samples are
            ignored), or None when no sample has one.
        size: exemplar side ``E`` (``data.exemplar_size``): every exemplar is resized to it.
        bends: ``(B, K, 2)`` spline shifts of the warps (``data.exemplar_warp=tps``), or None.

    Returns:
        ``exemplar``: ``(B, 3, E, E)`` float32 normalized L*a*b* (L*/50 - 1, a*b*/110; zeros
        where a sample has none), ``exemplar_mask``: ``(B,)`` bool, ``exemplar_rgb``:
        ``(B, 3, E, E)`` uint8 (for figures and the exemplar-colour metric).
    """
    kinds = kinds.to(rgb.device)
    images = warp_images(rgb, theta, size, bends)
    if others is not None:
        other = resize_uint8(others.to(rgb.device), (size, size))
        images = torch.where((kinds == OTHER)[:, None, None, None], other, images)
    mask = kinds != NONE
    images = torch.where(mask[:, None, None, None], images, torch.zeros_like(images))
    return {"exemplar": exemplar_lab(images) * mask[:, None, None, None], "exemplar_mask": mask, "exemplar_rgb": images}


def exemplar_lab(images: Tensor) -> Tensor:
    """``(B, 3, E, E)`` uint8 exemplars -> ``(B, 3, E, E)`` float32 normalized L*a*b* (L*/50 - 1, a*b*/110)."""
    lab = rgb_uint8_to_lab_batch(images, images.shape[-1])
    return torch.cat([lab["l_highres"], lab["ab_target"]], dim=1)


def exemplar_ab_histogram_intersection(ab_pred: Tensor, exemplar_ab: Tensor, bins: int = 16) -> Tensor:
    """How close an output's colour distribution is to its exemplar's: the intersection of the
    two normalized 2-D a*b* histograms (``bins`` x ``bins`` over [-110, 110]), 1 = identical.

    Args:
        ab_pred: ``(B, 2, H, W)`` normalized a*b* (/110) of the output.
        exemplar_ab: ``(B, 2, h, w)`` normalized a*b* of the exemplar (any size).

    Returns:
        ``(B,)`` float32 in [0, 1].
    """
    def histogram(ab: Tensor) -> Tensor:
        cells = ((ab.float().clamp(-1, 1 - 1e-6) + 1) / 2 * bins).long()  # (B, 2, H, W) bin per channel
        flat = (cells[:, 0] * bins + cells[:, 1]).flatten(1)
        counts = torch.zeros(ab.shape[0], bins * bins, device=ab.device)
        counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
        return counts / counts.sum(1, keepdim=True)

    return torch.minimum(histogram(ab_pred), histogram(exemplar_ab)).sum(1)


def side_of(size: int | None, default: int) -> int:
    """``data.exemplar_size`` (null: ``default``), checked."""
    side = default if size is None else int(size)
    if side < 16:
        raise ValueError(f"data.exemplar_size must be >= 16 pixels, got {size}")
    return side


__all__ = ["EVAL_EXEMPLARS", "NONE", "OTHER", "TRAIN_EXEMPLARS", "WARPED", "WARPS", "ExemplarPlan", "exemplar_ab_histogram_intersection",
           "exemplar_batch", "exemplar_lab", "side_of", "tps_control_points", "tps_shifts", "warp_grid", "warp_images",
           "warp_thetas"]
