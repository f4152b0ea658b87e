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
"""

from __future__ import annotations

from joint_colsr.run.fast_help import answer_help_early

answer_help_early(__name__, 'predict')  # before torch/Lightning are imported (run/fast_help.py)

import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

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
from joint_colsr.data.views import resize_box
from joint_colsr.data.decode import IMAGE_EXTENSIONS, ImageDecodeError, decode_image
from joint_colsr.run.outputs import atomic_write, refuse_foreign_run_dir
from joint_colsr.systems import eval_network, model_size

log = logging.getLogger(__name__)

MODES = ("photo", "reference")


def _net_outputs(net: torch.nn.Module, l_lowres: Tensor, l_highres: Tensor | None = None) -> dict[str, Tensor]:
    """The network contract of :meth:`ColSRSystem.infer`, on a plain net."""
    kwargs = {}
    if getattr(net, "needs_l_highres", False):
        if l_highres is None:
            raise ValueError(f"{type(net).__name__} needs ground-truth L* at the output size: use mode=reference")
        kwargs["l_highres"] = l_highres
    out = net(l_lowres, **kwargs)
    return dict(out) if isinstance(out, dict) else {"ab": out}


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
        scale: output / input size of the network, as a fraction (``Fraction(256, 96)``).
        tile_size: tile side in input pixels (rounded up to the scale's denominator).
        tile_overlap: overlap of neighbouring tiles in input pixels (same rounding).
        device: where the network runs.
    """

    def __init__(self, net: torch.nn.Module, scale: Fraction, tile_size: int = 192, tile_overlap: int = 48,
                 device: torch.device | str = "cpu") -> None:
        if scale < 1:
            raise ValueError(f"the model's scale must be >= 1, got {scale}")
        if tile_size < 16:
            raise ConfigError(f"tile_size must be at least 16 input pixels, got {tile_size}")
        if not 0 <= tile_overlap < tile_size // 2 + 1:
            raise ConfigError(f"tile_overlap must be in [0, tile_size / 2], got {tile_overlap} for tile_size={tile_size}")
        self.net, self.scale, self.device = net, Fraction(scale), torch.device(device)
        q = self.scale.denominator  # tile positions on multiples of q map to whole output pixels
        self.q = q
        self.tile = -(-tile_size // q) * q
        self.overlap = -(-tile_overlap // q) * q if tile_overlap else 0
        if self.overlap >= self.tile:
            raise ConfigError(f"tile_overlap ({tile_overlap}) rounds to {self.overlap}, not below tile_size ({self.tile})")

    def _out(self, n: int) -> int:
        value = n * self.scale
        if value.denominator != 1:
            raise AssertionError(f"{n} input pixels do not map to whole output pixels at scale {self.scale}")
        return int(value)

    @torch.no_grad()
    def __call__(self, l_star: Tensor) -> np.ndarray:
        """``(H, W)`` L* in [0, 100] -> ``(round(H*s), round(W*s), 3)`` uint8 sRGB."""
        if l_star.dim() != 2:
            raise ValueError(f"l_star must be (H, W), got {tuple(l_star.shape)}")
        height, width = l_star.shape
        out_h, out_w = int(round(height * self.scale)), int(round(width * self.scale))
        # Pad to whole multiples of q (tile corners on whole output pixels), at least 16 (the
        # encoders divide by 16); the padded margin is cropped from the output.
        pad_h, pad_w = self._padded(height) - height, self._padded(width) - width
        l_norm = normalize_l(l_star.float())[None, None]
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            l_norm = F.pad(l_norm, (0, pad_w, 0, pad_h), mode=mode)
        full_h, full_w = l_norm.shape[-2:]
        tile_h, tile_w = min(self.tile, full_h), min(self.tile, full_w)
        stride = self.tile - self.overlap
        ys, xs = _tile_starts(full_h, tile_h, stride), _tile_starts(full_w, tile_w, stride)
        # Separable blending: every tile's weight is wy(y) * wx(x), so their sum is Wy(y) * Wx(x).
        wx = [self._weights(xs, j, tile_w) for j in range(len(xs))]
        wy = [self._weights(ys, i, tile_h) for i in range(len(ys))]
        norm_x = torch.zeros(self._out(full_w), dtype=torch.float64)
        for j, x0 in enumerate(xs):
            norm_x[self._out(x0): self._out(x0) + len(wx[j])] += wx[j]
        result = np.zeros((out_h, out_w, 3), dtype=np.uint8)
        band: Tensor | None = None  # (3, rows, W) weighted sums of L*, a*, b* for rows band_y0.. on
        band_y0, norm_y = 0, torch.zeros(self._out(full_h), dtype=torch.float64)
        for i, y0 in enumerate(ys):
            oy0, th = self._out(y0), len(wy[i])
            norm_y[oy0: oy0 + th] += wy[i]
            needed = oy0 + th - band_y0
            grown = torch.zeros(3, needed, self._out(full_w), dtype=torch.float64)
            if band is not None:
                grown[:, : band.shape[1]] = band
            band = grown
            for j, x0 in enumerate(xs):
                lab = self._tile(l_norm[..., y0: y0 + tile_h, x0: x0 + tile_w])
                weight = wy[i][:, None] * wx[j][None, :]
                ox0 = self._out(x0)
                band[:, oy0 - band_y0: oy0 - band_y0 + th, ox0: ox0 + len(wx[j])] += lab * weight
            done = self._out(ys[i + 1]) if i + 1 < len(ys) else oy0 + th  # rows no later tile touches
            rows = done - band_y0
            finished = band[:, :rows] / (norm_y[band_y0:done, None] * norm_x[None, :])
            self._write(result, finished, band_y0, out_h, out_w)
            band, band_y0 = band[:, rows:], done
        return result

    def _padded(self, n: int) -> int:
        return -(-max(n, 16) // self.q) * self.q

    def _weights(self, starts: list[int], k: int, tile: int) -> Tensor:
        ramp_before = self._out(starts[k - 1] + tile - starts[k]) if k > 0 else 0
        ramp_after = self._out(starts[k] + tile - starts[k + 1]) if k + 1 < len(starts) else 0
        return _ramp(self._out(tile), ramp_before, ramp_after)

    def _tile(self, l_tile: Tensor) -> Tensor:
        out = _net_outputs(self.net, l_tile.to(self.device))
        size = (self._out(l_tile.shape[-2]), self._out(l_tile.shape[-1]))
        ab = out["ab"].float()
        if tuple(ab.shape[-2:]) != size:
            raise ValueError(f"the network maps a {tuple(l_tile.shape[-2:])} tile to {tuple(ab.shape[-2:])}, expected {size} "
                             f"(scale {self.scale}): is it fully convolutional?")
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
                         lowres_interpolation: str = "bicubic", device: torch.device | str = "cpu") -> np.ndarray:
    """The evaluation protocol on one photo: ``(H, W, 3)`` uint8 -> ``(S, S, 3)`` uint8
    (squash-resized to ``S``, L* downscaled to ``input_size``, GT L* + predicted a*b*)."""
    height, width = rgb.shape[:2]
    reference = resize_box(rgb, (0.0, 0.0, float(width), float(height)), output_size)
    tensor = torch.from_numpy(np.ascontiguousarray(reference.transpose(2, 0, 1)))[None].to(device)
    batch = rgb_uint8_to_lab_batch(tensor, input_size, lowres_interpolation)
    with torch.no_grad():
        ab = _net_outputs(net, batch["l_lowres"], batch["l_highres"])["ab"].float()
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
    tiler = TiledColorizer(net, Fraction(output_size, input_size), int(cfg.tile_size), int(cfg.tile_overlap), device)
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
        if mode == "reference":
            out = reference_prediction(net, rgb, input_size, output_size, interpolation, device)
        else:
            out = tiler(photo_l_star(rgb))
        target = targets[path]
        try:
            with atomic_write(target, "wb", fsync=False) as handle:  # a full disk leaves no truncated PNG behind
                Image.fromarray(out).save(handle, format="PNG")
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
