"""Colorize (and upscale) images: ``python -m joint_colsr.predict ckpt_path=CKPT input_dir=DIR output_dir=OUT [mode=...]``
(config: ``conf/predict.yaml``). One PNG per input image, same file stem, same sub-folders.

Modes:

* ``mode=photo`` (default, for users): any size, grayscale or colour (colour is reduced to
  L*). The image *is* the low-resolution input: the output is colour at the model's scale
  factor (``output_size / input_size``: 256/96 for the paper's net). L* is the network's
  own where it predicts one, otherwise the input L* upscaled bicubically. The network
  runs fully convolutionally on tiles of ``tile_size`` input pixels that overlap by
  ``tile_overlap``; overlaps are blended with linear ramps (no seams), and finished rows
  are converted to 8 bits band by band, so a 4000x3000 photo needs memory for its 8-bit
  output plus one band of tiles, never the whole float image.
* ``mode=reference``: the evaluation protocol of ``joint_colsr.eval``. Each input is a
  ground-truth photo: squash-resized to the output size, its L* downscaled to the model's
  input size, and the prediction merged with the *ground-truth* L*. The PNGs are the
  images ``eval`` scores.

Any size (models with an implicit upsampler, ``model.net.upsampler=implicit``, and
``baseline=bicubic``): ``scale=3.2`` (or ``[sy, sx]``) multiplies each side of every input;
``output_size=[W, H]`` makes every output exactly ``W x H`` (anisotropic when the input's aspect
differs). Tiles then snap to the denominator of each side's scale in lowest terms, so every tile
maps to whole output pixels; the tiles overlap in the input (= latent) grid and are blended as
above. A fixed-scale model asked for another scale is an error at start-up naming the option.
``max_output_side`` bounds any output side.

Exemplars (models that take one, ``model=joint_exemplar``): ``exemplar=PHOTO`` steers every
input, ``exemplar_map=CSV`` (rows ``input,exemplar``: paths relative to ``input_dir`` and to the
CSV's folder; inputs not listed run in automatic mode). Every exemplar is decoded and checked
at start-up (a missing, undecodable or grayscale one is an error naming it; nothing is
written), squash-resized to the checkpoint's exemplar size, and each output gets a sidecar
``<output>.json`` naming its input, exemplar and model. A model without exemplar input refuses them.
"""

from __future__ import annotations

from joint_colsr.run.fast_help import answer_help_early

answer_help_early(__name__, 'predict')  # before torch/Lightning are imported (run/fast_help.py)

import json
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from joint_colsr.assembly import build_eval_system
from joint_colsr.color import merge_l_ab_to_rgb, normalize_l, quantize_uint8, rgb_to_lab, rgb_uint8_to_lab_batch, upscale_l
from joint_colsr.run.config_checks import ConfigError, hydra_command
from joint_colsr.data.views import squash_resize
from joint_colsr.data.decode import IMAGE_EXTENSIONS, ImageDecodeError, decode_image
from joint_colsr.run.outputs import atomic_write, refuse_foreign_run_dir
from joint_colsr.systems import call_net, eval_network, model_size

log = logging.getLogger(__name__)

MODES = ("photo", "reference")


def _net_outputs(net: torch.nn.Module, l_lowres: Tensor, l_highres: Tensor | None = None,
                 out_hw: tuple[int, int] | None = None, exemplar: Tensor | None = None) -> dict[str, Tensor]:
    """The network contract (:func:`joint_colsr.systems.call_net`), on a plain net; ``exemplar``:
    ``(1, 3, E, E)`` normalized L*a*b* for every image of the batch, or None."""
    if getattr(net, "needs_l_highres", False) and l_highres is None:
        raise ValueError(f"{type(net).__name__} needs ground-truth L* at the output size: use mode=reference")
    mask = None
    if exemplar is not None:
        exemplar = exemplar.to(l_lowres.device).expand(l_lowres.shape[0], -1, -1, -1)
        mask = torch.ones(l_lowres.shape[0], dtype=torch.bool, device=l_lowres.device)
    return call_net(net, l_lowres, l_highres, out_hw, exemplar, mask)


def _ramp(length: int, ramp_before: int, ramp_after: int) -> Tensor:
    """1-D blending weights of one tile: linear ramps over the overlaps it shares with neighbours."""
    w = torch.ones(length, dtype=torch.float64)
    if ramp_before:
        w[:ramp_before] = (torch.arange(ramp_before, dtype=torch.float64) + 0.5) / ramp_before
    if ramp_after:
        w[length - ramp_after:] = torch.minimum(w[length - ramp_after:], (torch.arange(ramp_after, 0, -1, dtype=torch.float64) - 0.5) / ramp_after)
    return w


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile start positions covering ``[0, length)``; the last tile ends at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


class TiledColorizer:
    """Runs a network over an image of any size in overlapping tiles (see the module docs).

    Args:
        net: a network of the suite in eval mode (``(B, 1, h, w)`` L* -> a*b*, maybe L*).
        scale: output / input size, as a fraction (``Fraction(256, 96)``), or one per side
            ``(rows, columns)``; a scale other than the net's own needs an any-scale net.
        tile_size: tile side in input pixels (rounded up to each side's scale denominator).
        tile_overlap: overlap of neighbouring tiles in input pixels (same rounding).
        device: where the network runs.
    """

    def __init__(self, net: torch.nn.Module, scale: Fraction | tuple[Fraction, Fraction], tile_size: int = 192,
                 tile_overlap: int = 48, device: torch.device | str = "cpu") -> None:
        #: ``(1, 3, E, E)`` normalized L*a*b* every tile is coloured from (exemplar nets), or None.
        self.exemplar: Tensor | None = None
        scales = tuple(Fraction(s) for s in (scale if isinstance(scale, tuple) else (scale, scale)))
        if min(scales) < 1:
            raise ValueError(f"the scale must be >= 1, got {' x '.join(str(s) for s in scales)}")
        if tile_size < 16:
            raise ConfigError(f"tile_size must be at least 16 input pixels, got {tile_size}")
        if not 0 <= tile_overlap < tile_size // 2 + 1:
            raise ConfigError(f"tile_overlap must be in [0, tile_size / 2], got {tile_overlap} for tile_size={tile_size}")
        self.net, self.scales, self.device = net, scales, torch.device(device)
        # Per side (rows, columns): tile positions on multiples of q map to whole output pixels.
        self.qs = tuple(s.denominator for s in scales)
        self.overlaps = tuple(-(-tile_overlap // q) * q if tile_overlap else 0 for q in self.qs)
        # A denominator near the tile size (an output_size whose scale is H'/H in lowest terms)
        # rounds the overlap up to the tile: such a side gets larger tiles, one step of q apart.
        self.tiles = tuple(max(-(-tile_size // q) * q, overlap + q) for q, overlap in zip(self.qs, self.overlaps))

    def _out(self, n: int, axis: int) -> int:
        value = n * self.scales[axis]
        if value.denominator != 1:
            raise AssertionError(f"{n} input pixels do not map to whole output pixels at scale {self.scales[axis]}")
        return int(value)

    @torch.no_grad()
    def __call__(self, l_star: Tensor) -> np.ndarray:
        """``(H, W)`` L* in [0, 100] -> ``(round(H*s), round(W*s), 3)`` uint8 sRGB."""
        if l_star.dim() != 2:
            raise ValueError(f"l_star must be (H, W), got {tuple(l_star.shape)}")
        height, width = l_star.shape
        out_h, out_w = int(round(height * self.scales[0])), int(round(width * self.scales[1]))
        # Pad to whole multiples of q (tile corners on whole output pixels), at least 16 (the
        # encoders divide by 16); the padded margin is cropped from the output.
        pad_h, pad_w = self._padded(height, 0) - height, self._padded(width, 1) - width
        l_norm = normalize_l(l_star.float())[None, None]
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            l_norm = F.pad(l_norm, (0, pad_w, 0, pad_h), mode=mode)
        full_h, full_w = l_norm.shape[-2:]
        tile_h, tile_w = min(self.tiles[0], full_h), min(self.tiles[1], full_w)
        ys = _tile_starts(full_h, tile_h, self.tiles[0] - self.overlaps[0])
        xs = _tile_starts(full_w, tile_w, self.tiles[1] - self.overlaps[1])
        # Separable blending: every tile's weight is wy(y) * wx(x), so their sum is Wy(y) * Wx(x).
        wx = [self._weights(xs, j, tile_w, 1) for j in range(len(xs))]
        wy = [self._weights(ys, i, tile_h, 0) for i in range(len(ys))]
        norm_x = torch.zeros(self._out(full_w, 1), dtype=torch.float64)
        for j, x0 in enumerate(xs):
            norm_x[self._out(x0, 1): self._out(x0, 1) + len(wx[j])] += wx[j]
        result = np.zeros((out_h, out_w, 3), dtype=np.uint8)
        band: Tensor | None = None  # (3, rows, W) weighted sums of L*, a*, b* for rows band_y0.. on
        band_y0, norm_y = 0, torch.zeros(self._out(full_h, 0), dtype=torch.float64)
        for i, y0 in enumerate(ys):
            oy0, th = self._out(y0, 0), len(wy[i])
            norm_y[oy0: oy0 + th] += wy[i]
            needed = oy0 + th - band_y0
            grown = torch.zeros(3, needed, self._out(full_w, 1), dtype=torch.float64)
            if band is not None:
                grown[:, : band.shape[1]] = band
            band = grown
            for j, x0 in enumerate(xs):
                lab = self._tile(l_norm[..., y0: y0 + tile_h, x0: x0 + tile_w])
                weight = wy[i][:, None] * wx[j][None, :]
                ox0 = self._out(x0, 1)
                band[:, oy0 - band_y0: oy0 - band_y0 + th, ox0: ox0 + len(wx[j])] += lab * weight
            done = self._out(ys[i + 1], 0) if i + 1 < len(ys) else oy0 + th  # rows no later tile touches
            rows = done - band_y0
            finished = band[:, :rows] / (norm_y[band_y0:done, None] * norm_x[None, :])
            self._write(result, finished, band_y0, out_h, out_w)
            band, band_y0 = band[:, rows:], done
        return result

    def _padded(self, n: int, axis: int) -> int:
        q = self.qs[axis]
        return -(-max(n, 16) // q) * q

    def _weights(self, starts: list[int], k: int, tile: int, axis: int) -> Tensor:
        ramp_before = self._out(starts[k - 1] + tile - starts[k], axis) if k > 0 else 0
        ramp_after = self._out(starts[k] + tile - starts[k + 1], axis) if k + 1 < len(starts) else 0
        return _ramp(self._out(tile, axis), ramp_before, ramp_after)

    def _tile(self, l_tile: Tensor) -> Tensor:
        size = (self._out(l_tile.shape[-2], 0), self._out(l_tile.shape[-1], 1))
        out = _net_outputs(self.net, l_tile.to(self.device), out_hw=size, exemplar=self.exemplar)
        ab = out["ab"].float()
        if tuple(ab.shape[-2:]) != size:
            raise ValueError(f"the network maps a {tuple(l_tile.shape[-2:])} tile to {tuple(ab.shape[-2:])}, expected {size} "
                             f"(scale {self.scales[0]} x {self.scales[1]}): is it fully convolutional?")
        l_own = out["l"].float() if out.get("l") is not None else upscale_l(l_tile.to(self.device), size)
        return torch.cat([l_own, ab], dim=1)[0].double().cpu()

    @staticmethod
    def _write(result: np.ndarray, lab_norm: Tensor, y0: int, out_h: int, out_w: int) -> None:
        y1 = min(y0 + lab_norm.shape[1], out_h)
        if y1 <= y0:
            return
        # A few rows at a time: the L*a*b* -> sRGB conversion allocates several float copies.
        for start in range(0, y1 - y0, 64):
            stop = min(start + 64, y1 - y0)
            lab = lab_norm[None, :, start:stop, :out_w].float()
            rgb = quantize_uint8(merge_l_ab_to_rgb(lab[:, :1].clamp(-1, 1), lab[:, 1:]))
            result[y0 + start: y0 + stop] = rgb[0].permute(1, 2, 0).byte().numpy()


def reference_prediction(net: torch.nn.Module, rgb: np.ndarray, input_size: int, output_size: int,
                         lowres_interpolation: str = "bicubic", device: torch.device | str = "cpu",
                         exemplar: Tensor | None = None) -> np.ndarray:
    """The evaluation protocol on one photo: ``(H, W, 3)`` uint8 -> ``(S, S, 3)`` uint8
    (squash-resized to ``S``, L* downscaled to ``input_size``, GT L* + predicted a*b*)."""
    reference = squash_resize(rgb, output_size)
    tensor = torch.from_numpy(np.ascontiguousarray(reference.transpose(2, 0, 1)))[None].to(device)
    batch = rgb_uint8_to_lab_batch(tensor, input_size, lowres_interpolation)
    with torch.no_grad():
        ab = _net_outputs(net, batch["l_lowres"], batch["l_highres"], exemplar=exemplar)["ab"].float()
    return quantize_uint8(merge_l_ab_to_rgb(batch["l_highres"], ab))[0].permute(1, 2, 0).byte().cpu().numpy()


def photo_l_star(rgb: np.ndarray, rows: int = 256) -> Tensor:
    """``(H, W, 3)`` uint8 sRGB -> ``(H, W)`` L* in [0, 100], converted a band of rows at a
    time (the full float L*a*b* of a 12-megapixel photo would take several copies of 144 MB)."""
    out = torch.empty(rgb.shape[:2], dtype=torch.float32)
    # .copy(): a decoded photo may be a read-only buffer, which torch.from_numpy warns about.
    for y0 in range(0, rgb.shape[0], rows):
        band = torch.from_numpy(rgb[y0: y0 + rows].copy()).permute(2, 0, 1)[None].float() / 255.0
        out[y0: y0 + rows] = rgb_to_lab(band)[0, 0]
    return out


def list_images(input_dir: Path) -> list[Path]:
    files = sorted(p for p in input_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ConfigError(f"input_dir={input_dir} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def output_names(files: list[Path], input_dir: Path, output_dir: Path) -> dict[Path, Path]:
    """One distinct PNG path per input: ``sub/a.jpg`` -> ``OUT/sub/a.png``; inputs whose stems
    collide (``a.png``, ``a.jpg``, ``a.JPEG``) each keep their extension: ``a.jpg.png`` ..."""
    plain = {path: output_dir / path.relative_to(input_dir).with_suffix(".png") for path in files}
    counts: dict[Path, int] = {}
    for target in plain.values():
        key = Path(str(target).lower())
        counts[key] = counts.get(key, 0) + 1
    out = {}
    for path, target in plain.items():
        if counts[Path(str(target).lower())] > 1:
            target = output_dir / path.relative_to(input_dir).with_name(path.name + ".png")
        out[path] = target
    return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _fraction(value: Any, key: str) -> Fraction:
    try:
        fraction = Fraction(str(value))  # str: 3.2 -> 16/5, not the binary float's 3602879701896397/1125899906842624
    except (TypeError, ValueError, ZeroDivisionError):
        raise ConfigError(f"{key} must be a number or [rows, columns] numbers, got {value!r}") from None
    if fraction <= 1:
        raise ConfigError(f"{key} must be > 1 (an output larger than the input), got {value}")
    return fraction


def requested_size(cfg: DictConfig, net: torch.nn.Module, native: Fraction,
                   files: list[Path]) -> Callable[[int, int], tuple[Fraction, Fraction]]:
    """Photo mode: ``(height, width)`` of an input -> ``(row, column)`` scales of its output, from
    ``scale`` / ``output_size`` (default: the model's own scale). Checked at start-up: a scale
    <= 1, an output smaller than an input or with a side over ``max_output_side`` (input sizes
    read from the file headers), and a fixed-scale model asked for another scale."""
    scale, size = cfg.get("scale"), cfg.get("output_size")
    if scale is not None and size is not None:
        raise ConfigError(f"set scale=S or output_size=[W,H], not both (got scale={scale}, output_size={list(size)})")
    if (scale is not None or size is not None) and cfg.get("mode", "photo") != "photo":
        raise ConfigError("scale / output_size apply to mode=photo (mode=reference scores the model's own data task)")
    max_side = int(cfg.get("max_output_side") or 16384)
    if scale is not None:
        parts = [scale, scale] if isinstance(scale, (int, float, str)) else list(scale)
        if len(parts) != 2:
            raise ConfigError(f"scale must be a number or [rows, columns], got {list(parts)}")
        factors = (_fraction(parts[0], "scale"), _fraction(parts[1], "scale"))
        rule = lambda h, w: factors  # noqa: E731
    elif size is not None:
        try:
            out_w, out_h = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ConfigError(f"output_size must be [W, H] in pixels, got {size!r}") from None
        if not 1 <= out_w <= max_side or not 1 <= out_h <= max_side:
            raise ConfigError(f"output_size=[{out_w}, {out_h}]: each side must be in [1, max_output_side={max_side}]")
        rule = lambda h, w: (Fraction(out_h, h), Fraction(out_w, w))  # noqa: E731
    else:
        return lambda h, w: (native, native)
    if not getattr(net, "any_scale", False):
        what = f"scale={scale}" if scale is not None else f"output_size={list(size)}"
        if scale is None or factors != (native, native):
            raise ConfigError(f"{what}: {type(net).__name__} is fixed-scale (x{float(native):.4g}); only an any-scale model "
                              "serves other sizes: train one with model.net.upsampler=implicit (docs/models.md, "
                              "'Continuous magnification'), or leave scale/output_size unset")
    for path in files:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError):
            continue  # unreadable: reported (and skipped) when decoded
        sy, sx = rule(height, width)
        if sy < 1 or sx < 1:
            raise ConfigError(f"output_size=[{size[0]}, {size[1]}] is smaller than the input {path} ({width}x{height})")
        if round(height * sy) > max_side or round(width * sx) > max_side:
            raise ConfigError(f"{path} ({width}x{height}) at x{float(sy):.4g} x {float(sx):.4g} would be "
                              f"{round(width * sx)}x{round(height * sy)}: over max_output_side={max_side}")
    return rule


def load_exemplar(path: Path, size: int, key: str) -> Tensor:
    """A colour photo as an exemplar: ``(1, 3, size, size)`` normalized L*a*b* (squash-resized).

    Raises:
        ConfigError: naming ``key`` and the file: missing, undecodable, or without colour.
    """
    from joint_colsr.data.decode import unusable_reason

    if not path.is_file():
        raise ConfigError(f"{key}: exemplar {path} is not a file")
    try:
        rgb = decode_image(path)
    except ImageDecodeError as err:
        raise ConfigError(f"{key}: exemplar {path} cannot be decoded ({err.reason})") from None
    reason = unusable_reason(rgb, 1, float("inf"), True)
    if reason is not None:
        raise ConfigError(f"{key}: exemplar {path} cannot steer colours: {reason}")
    from joint_colsr.data.exemplars import exemplar_lab

    image = squash_resize(rgb, size)
    return exemplar_lab(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None])


def exemplars_for(cfg: DictConfig, net: torch.nn.Module, files: list[Path], input_dir: Path, size: int) -> dict[Path, Path]:
    """Input -> exemplar file, from ``exemplar=PHOTO`` or ``exemplar_map=CSV`` (checked at start-up)."""
    import csv

    photo, table = cfg.get("exemplar"), cfg.get("exemplar_map")
    if photo is None and table is None:
        return {}
    if photo is not None and table is not None:
        raise ConfigError("set exemplar=PHOTO or exemplar_map=CSV, not both")
    if not getattr(net, "takes_exemplar", False):
        raise ConfigError(f"{type(net).__name__} takes no exemplar (exemplar= / exemplar_map= need model=joint_exemplar)")
    if photo is not None:
        return {path: Path(str(photo)).expanduser() for path in files}
    table_path = Path(str(table)).expanduser()
    if not table_path.is_file():
        raise ConfigError(f"exemplar_map={table} is not a file")
    known = {path.resolve(): path for path in files}
    mapping: dict[Path, Path] = {}
    with open(table_path, newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or (line == 1 and [c.strip().lower() for c in row[:2]] == ["input", "exemplar"]):
                continue
            if len(row) < 2:
                raise ConfigError(f"exemplar_map={table} line {line}: expected 'input,exemplar', got {row}")
            source = (input_dir / row[0].strip()).resolve()
            if source not in known:
                raise ConfigError(f"exemplar_map={table} line {line}: {row[0]} is not an image of input_dir={input_dir}")
            mapping[known[source]] = (table_path.parent / row[1].strip()).expanduser()
    return mapping


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Write one PNG per image of ``cfg.input_dir`` to ``cfg.output_dir``; return counts."""
    mode = cfg.get("mode", "photo")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not cfg.get("input_dir") or not cfg.get("output_dir"):
        raise ConfigError("set input_dir=DIR (images to colorize) and output_dir=OUT (where PNGs go)")
    input_dir = Path(str(cfg.input_dir)).expanduser()
    if not input_dir.is_dir():
        raise ConfigError(f"input_dir={cfg.input_dir} is not a folder")
    output_dir = Path(str(cfg.output_dir)).expanduser()
    overwrite = bool(cfg.get("overwrite", False))
    inside = output_dir.resolve() == input_dir.resolve() or input_dir.resolve() in output_dir.resolve().parents
    if inside and not overwrite:
        raise ConfigError(f"output_dir={cfg.output_dir} is input_dir={cfg.input_dir} or inside it: the PNGs could replace "
                          "input photos (and be read as inputs next time); pick another output_dir, or overwrite=true")
    refuse_foreign_run_dir(output_dir, "predict", key="output_dir")
    files = list_images(input_dir)
    targets = output_names(files, input_dir, output_dir)
    system = build_eval_system(cfg)
    device = _device(str(cfg.get("device", "auto")))
    net = eval_network(system).to(device).eval()
    input_size, output_size = model_size(system, "input_size"), model_size(system, "output_size")
    if input_size is None or output_size is None:
        raise ConfigError("the model does not say its input_size/output_size (model.net.*)")
    native = Fraction(output_size, input_size)
    scales_of = requested_size(cfg, net, native, files)
    exemplar_size = int((system.data_task or {}).get("exemplar_size") or 256)
    exemplar_of = exemplars_for(cfg, net, files, input_dir, exemplar_size)
    key = "exemplar" if cfg.get("exemplar") is not None else "exemplar_map"
    exemplars = {path: load_exemplar(path, exemplar_size, key) for path in sorted(set(exemplar_of.values()))}
    tilers: dict[tuple[Fraction, Fraction], TiledColorizer] = {}
    # Reference mode degrades as the run did: the checkpoint's L* downscaling unless set here.
    interpolation = str(cfg.get("lowres_interpolation") or (system.data_task or {}).get("lowres_interpolation") or "bicubic")
    written, failed = 0, []
    for path in tqdm(files, desc=f"predict ({mode})", unit="image"):
        try:
            rgb = decode_image(path)
        except ImageDecodeError as err:
            log.warning("skipping %s", err)
            failed.append(str(path))
            continue
        exemplar = exemplars[exemplar_of[path]] if path in exemplar_of else None
        if mode == "reference":
            out = reference_prediction(net, rgb, input_size, output_size, interpolation, device, exemplar)
        else:
            scales = scales_of(*rgb.shape[:2])
            if scales not in tilers:
                tilers[scales] = TiledColorizer(net, scales, int(cfg.tile_size), int(cfg.tile_overlap), device)
            tilers[scales].exemplar = exemplar
            out = tilers[scales](photo_l_star(rgb))
        target = targets[path]
        try:
            with atomic_write(target, "wb", fsync=False) as handle:  # a full disk leaves no truncated PNG behind
                Image.fromarray(out).save(handle, format="PNG")
            if exemplar_of:
                with atomic_write(target.with_name(target.name + ".json"), "w", fsync=False) as handle:
                    json.dump({"input": str(path), "exemplar": str(exemplar_of[path]) if path in exemplar_of else None,
                               "model": str(cfg.get("ckpt_path") or cfg.get("baseline")), "mode": mode}, handle, indent=2)
        except OSError as err:
            raise ConfigError(f"could not write {target} ({err.strerror or err}); {written} PNG(s) were written before it, "
                              "no partial file is left") from None
        written += 1
    print(f"Wrote {written} PNG(s) to {output_dir}" + (f"; skipped {len(failed)} unreadable file(s)" if failed else ""))
    return {"written": written, "skipped": failed}


@hydra_command("predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
