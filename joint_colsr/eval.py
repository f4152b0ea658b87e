"""Evaluate a checkpoint or a baseline: ``python -m joint_colsr.eval ckpt_path=CKPT data=... [data.root=DIR]``
(config: ``conf/eval.yaml``; ``baseline=gray|bicubic`` instead of ``ckpt_path`` for the floors).

Every image of the evaluation split is squash-resized to the output size (as validation
data is), its L* downscaled to the model's input, and scored with every metric of
:mod:`joint_colsr.metrics`. ``data=folder`` scores every image of the folder (no
train/validation split); ``data=coco`` scores val2017; ``data=samples`` the validation photos.

The run directory receives:

* ``metrics.json``: ``psnr`` (protocol 1: ground-truth L* + predicted a*b*), ``psnr_joint``
  (protocol 2: the model's own L* + predicted a*b*), ``ssim``, ``ssim_joint``, ``psnr_ab``,
  ``psnr_y``, ``auc_ab``, ``colorfulness``, ``colorfulness_gt``, ``colorfulness_gap``,
  ``psnr_gray`` (the same images with a* = b* = 0), ``num_images``, what was evaluated,
  ``uses_ground_truth_l`` (true for a model fed the ground-truth high-resolution L*:
  ``baseline=gray``, ``residual_joint`` ``l_source=gt``; its protocol-2 keys ``psnr_joint``,
  ``ssim_joint`` and ``psnr_y`` are null: its L* is given, not produced),
  and the photos not scored: ``skipped`` / ``skipped_photos`` (found unusable while
  evaluating: not decoded, grayscale, ...), ``excluded_at_cache_build`` (left out when the
  cache ``data.cache`` was built; null without a cache) and ``excluded_at_start_up`` (left
  out by the source's start-up checks), each ``{"count", "reasons", "photos"}``;
  ``by_supercategory`` for sources with categories (COCO);
* ``metrics.md``: the same as a markdown table, what was not scored (plus the per-supercategory table);
* ``per_image.csv``: one row per image;
* ``best_worst.png``: the ``num_examples`` best and worst images by ``psnr`` (the paper's Fig. 1);
* ``category.png``: the first ``num_examples`` images showing ``grid_category`` (COCO; the paper's Fig. 2).

Per-scale evaluation (``scales=[1.5,2,2.67,3,4]``; any model that serves those scales: an
implicit-upsampler checkpoint, ``baseline=bicubic|gray``, or a fixed-scale model at its own
scale): each photo is squash-resized once to the largest target (whatever the model was
trained on, so every model is scored on the same targets), each scale's target is that image resized down by the suite's bicubic
and its input L* made from that target, as in training. ``metrics.json`` then holds
``scales`` and ``by_scale.<scale>.<metric>`` (scale as written: ``"2.67"``; with the bicubic
baseline's ``bicubic_psnr_joint`` / ``bicubic_psnr_y`` on the same images, and
``extrapolation: true`` for a scale outside the model's training range); the top-level
metrics are the means over every (image, scale); Y-PSNR crops ``ceil(scale)`` pixels.
``per_image.csv`` gains a ``scale`` column, ``metrics.md`` a per-scale table, and
``by_scale.png`` plots PSNR (both protocols) and Y-PSNR against scale, with the bicubic
baseline and the checkpoints of ``fixed_ckpts=[CKPT, ...]`` (each scored at its own scale).

Exemplar protocols (``exemplar=none|warped_gt|same_category|random``; ``data.val_exemplar``):
each photo is scored with the exemplar the protocol gives it (:mod:`joint_colsr.data.exemplars`;
``random`` / ``same_category``: another photo of the test split, never its own). A model that
takes exemplars uses it; the others ignore it. ``metrics.json`` records ``exemplar`` (the
protocol) and ``uses_ground_truth_colour`` (true for ``warped_gt``: the exemplar carries the
target's colours, an upper bound never ranked beside blind rows), and with an exemplar
``exemplar_ab_intersection``: how close the output's a*b* distribution is to the exemplar's
(histogram intersection, 1 = identical; beside colourfulness); ``per_image.csv`` names each
image's ``exemplar``, and the figures gain an exemplar column.
"""

from __future__ import annotations

from joint_colsr.run.fast_help import answer_help_early

answer_help_early(__name__, 'eval')  # before torch/Lightning are imported (run/fast_help.py)

import csv
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor

from joint_colsr.assembly import build_datamodule, build_eval_system, build_trainer, start_run
from joint_colsr.color import resize_uint8, upscale_l
from joint_colsr.data.scales import check_scales, scale_label, target_side
from joint_colsr.run.config_checks import ConfigError, check_config, hydra_command
from joint_colsr.data.decode import count_reasons
from joint_colsr.data.exemplars import EVAL_EXEMPLARS, exemplar_ab_histogram_intersection
from joint_colsr.metrics import PER_IMAGE_METRICS, colorization_psnr, image_metrics, psnr_y, rgb_from_prediction, summarize
from joint_colsr.run.outputs import print_run_summary, write_json
from joint_colsr.systems import run_system
from joint_colsr.systems.colsr import uses_ground_truth_l
from joint_colsr.viz import EVALUATION_COLUMNS, evaluation_row, make_grid, own_uint8, save_png

log = logging.getLogger(__name__)

#: Columns of the results table, in order, with their headers.
TABLE_COLUMNS: dict[str, str] = {
    "psnr": "PSNR (GT L*)",
    "psnr_joint": "PSNR (own L*)",
    "ssim": "SSIM (GT L*)",
    "ssim_joint": "SSIM (own L*)",
    "psnr_ab": "PSNR a*b*",
    "psnr_y": "Y-PSNR",
    "auc_ab": "AuC a*b*",
    "colorfulness": "CF",
    "colorfulness_gap": "dCF",
    "psnr_gray": "gray PSNR",
}

#: Per-image metrics of the bicubic baseline kept beside a model's in per-scale evaluation.
BICUBIC_METRICS = ("bicubic_psnr_joint", "bicubic_psnr_y")

#: Images whose metrics are computed together (bounds the metrics' working memory).
METRICS_CHUNK = 16

#: Metrics of the L* a model delivers (protocol 2, Y-PSNR): null for a GT-L*-guided model.
PROTOCOL2_METRICS = ("psnr_joint", "ssim_joint", "psnr_y")
#: The mark next to every number of a model fed the ground-truth high-resolution L*.
GUIDED_MARK = "GT-L* guided"

PROTOCOL_NOTE = (
    "All numbers at the output size, per image then averaged. PSNR/SSIM on 8-bit sRGB over the whole image: "
    "'GT L*' = ground-truth L* + predicted a*b* (the colorization protocol, the paper's Table III); "
    "'own L*' = the model's own L* (its predicted L*, or the input L* upscaled bicubically) + predicted a*b*. "
    "PSNR a*b*: CIE units, peak 220. Y-PSNR: BT.601 Y of the model's own L* with ground-truth a*b*, "
    "border of {crop} px cropped. AuC a*b*: Zhang et al. 2016, thresholds 0..150. CF / dCF: Hasler-Suesstrunk "
    "colourfulness of the GT-L* prediction and |mean CF(pred) - mean CF(gt)|. gray PSNR: a*=b*=0 with GT L* on the same images. "
    "'" + GUIDED_MARK + "': the model is fed the ground-truth high-resolution L* (an advantage blind models do not have); "
    "its own-L* columns are empty, and its numbers rank only beside other guided ones."
)


def resolve_crop_border(value: Any, input_size: int, output_size: int) -> int:
    """``crop_border``: an integer, or ``auto`` = ceil(output / input) (SR papers crop the scale)."""
    if value in (None, "auto"):
        return int(math.ceil(output_size / input_size)) if output_size > input_size else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"crop_border must be 'auto' or a non-negative integer, got {value!r}")
    return value


def photo_lookup(dataset: Any) -> Callable[[int], tuple[str, tuple[int, ...]]]:
    """Sample index -> (photo key, label ids) for the evaluation datasets: decoded files
    (``items``) or a decoded-image cache (``split.keys`` / ``split.labels``); otherwise ``#index``."""
    views = len(getattr(dataset, "views", (None,)))
    items = getattr(dataset, "items", None)
    if items:
        return lambda index: (items[index // views].key, tuple(items[index // views].labels or ()))
    split = getattr(dataset, "split", None)
    keys, labels = getattr(split, "keys", None), getattr(split, "labels", None)
    if isinstance(keys, (list, tuple)):
        return lambda index: (str(keys[index // views]), tuple(labels[index // views]) if labels else ())
    return lambda index: (f"#{index}", ())


class Evaluator(pl.LightningModule):
    """Runs a system over the evaluation images and keeps per-image metrics and example images.

    Args:
        system: any system of the suite (``infer`` contract), or a baseline.
        crop_border: border removed for Y-PSNR.
        num_examples: images kept for the best, the worst and the category grid.
        grid_category: category name (COCO) whose images fill the category grid.
    """

    def __init__(self, system: pl.LightningModule, crop_border: int, num_examples: int = 6, grid_category: str | None = "person",
                 crop_borders: Mapping[str, int] | None = None, example_scale: str | None = None) -> None:
        super().__init__()
        self.system = system
        self.crop_border = crop_border
        #: Per-scale evaluation: Y-PSNR border of each scale label, and the scale whose images fill the grids.
        self.crop_borders = dict(crop_borders or {})
        self.example_scale = example_scale
        self.num_examples = num_examples
        self.grid_category = grid_category
        self.rows: list[dict[str, Any]] = []
        self.best: list[tuple[float, int, list[Tensor]]] = []
        self.worst: list[tuple[float, int, list[Tensor]]] = []
        self.category_examples: list[list[Tensor]] = []
        #: Photos that could not be used (corrupt, grayscale, ...): not scored, listed in metrics.json.
        self.skipped_keys: list[str] = []
        self.categories: dict[int, dict[str, str]] = {}
        self._lookup = None
        #: The model is fed the ground-truth L*: its protocol-2 metrics are left empty.
        self.guided = uses_ground_truth_l(getattr(system, "net", system))

    def on_test_start(self) -> None:
        self.system.eval()
        datamodule = self.trainer.datamodule
        self.categories = dict(getattr(datamodule, "categories", None) or getattr(datamodule.source, "categories", None) or {})
        self._lookup = photo_lookup(datamodule.val_set)

    def _describe(self, index: int) -> dict[str, Any]:
        key, labels = self._lookup(index) if self._lookup else (f"#{index}", ())
        names = sorted({self.categories[c]["name"] for c in labels if c in self.categories})
        supers = sorted({self.categories[c]["supercategory"] for c in labels if c in self.categories})
        return {"key": key, "categories": names, "supercategories": supers}

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        if "by_scale" not in batch:
            self._score(batch, batch, None)
            return
        for label, sub in batch["by_scale"].items():
            self._score(sub, batch, label)

    def _score(self, batch: Mapping[str, Tensor], outer: Mapping[str, Tensor], scale: str | None) -> None:
        """Per-image rows of one batch (at one scale: ``scale``, its label; ``outer`` holds the indices)."""
        out = run_system(self.system, batch)
        ab = out["ab"]
        size = tuple(batch["l_highres"].shape[-2:])
        if tuple(ab.shape[-2:]) != size:
            raise ValueError(f"the model returns a*b* of {tuple(ab.shape[-2:])}, the data is {size}: data.output_size must match the model")
        if self.guided:
            l_own = batch["l_highres"]  # given, not produced: the protocol-2 keys are nulled below
        else:
            l_own = out["l"] if out.get("l") is not None else upscale_l(batch["l_lowres"], size)
        skipped = outer.get("skipped", torch.zeros_like(outer["index"])).tolist()
        indices = outer["index"].tolist()
        crop = self.crop_border if scale is None else self.crop_borders[scale]
        exemplars = self._exemplar_columns(batch, ab)
        # Per-image metrics, a few images at a time: their temporaries (~20 float copies of
        # the images) stay bounded whatever data.batch_size is; the values are per image.
        for start in range(0, len(indices), METRICS_CHUNK):
            part = slice(start, start + METRICS_CHUNK)
            m = image_metrics(batch["l_highres"][part], l_own[part], ab[part], batch["ab_target"][part],
                              batch["rgb_target"][part], crop)
            m["psnr_gray"] = colorization_psnr(batch["l_highres"][part], torch.zeros_like(ab[part]), batch["rgb_target"][part])
            names = (*PER_IMAGE_METRICS, "psnr_gray")
            if scale is not None:  # the bicubic baseline on the same images, for the per-scale plot
                l_bicubic = upscale_l(batch["l_lowres"][part], size)
                m["bicubic_psnr_joint"] = colorization_psnr(l_bicubic, torch.zeros_like(ab[part]), batch["rgb_target"][part])
                m["bicubic_psnr_y"] = psnr_y(rgb_from_prediction(l_bicubic, batch["ab_target"][part].float()),
                                             batch["rgb_target"][part].float(), crop)
                names = (*names, *BICUBIC_METRICS)
            values = {k: m[k].tolist() for k in names}  # one transfer per metric
            for j, index in enumerate(indices[part]):
                i = start + j
                if skipped[i]:
                    # The dataset put the next usable photo in place of an unusable one: that photo
                    # is scored at its own index, so this sample would count it twice.
                    self.skipped_keys.append(self._describe(index)["key"])
                    continue
                row = {"index": index, **self._describe(index)}
                if scale is not None:
                    row["scale"] = scale
                if exemplars is not None:
                    name, row["exemplar_ab_intersection"] = exemplars[0][i], exemplars[1][i]
                    row["exemplar"] = f"warped:{row['key']}" if name is None else name
                row.update({k: float(v[j]) for k, v in values.items()})
                if self.guided:
                    row.update(dict.fromkeys(PROTOCOL2_METRICS))
                self.rows.append(row)
                if scale == self.example_scale:
                    self._keep_examples(row, batch["l_lowres"][i], m["rgb"][j], m["rgb_joint"][j], batch["rgb_target"][i],
                                        batch["exemplar_rgb"][i] if exemplars is not None else None)

    def _exemplar_columns(self, batch: Mapping[str, Tensor], ab: Tensor) -> tuple[list[str | None], list[float | None]] | None:
        """Per image of a batch with exemplars: the exemplar's name (the other photo's key, None for
        the image's own warped photo, empty without one) and the a*b* histogram intersection with
        it (None without one)."""
        if batch.get("exemplar") is None:
            return None
        views = len(getattr(self.trainer.datamodule.val_set, "views", (None,))) if self._trainer is not None else 1
        mask = batch["exemplar_mask"].tolist()
        others = batch["exemplar_index"].tolist()
        closeness = exemplar_ab_histogram_intersection(ab, batch["exemplar"][:, 1:]).tolist()
        names = []
        for keep, other in zip(mask, others):
            if not keep:
                names.append("")
            elif other >= 0:
                names.append(self._lookup(other * views)[0] if self._lookup else f"#{other}")
            else:
                names.append(None)
        return names, [c if keep else None for c, keep in zip(closeness, mask)]

    def _keep_examples(self, row: dict, l_lowres: Tensor, rgb: Tensor, rgb_joint: Tensor, target: Tensor,
                       exemplar: Tensor | None = None) -> None:
        n = self.num_examples
        if n <= 0:
            return
        joint = "GT L*" if row["psnr_joint"] is None else f"{row['psnr_joint']:.2f}"
        text = f"PSNR {row['psnr']:.2f} | own L* {joint}  {Path(str(row['key'])).stem[:16]}"

        kept: list[Tensor] = []

        def images() -> list[Tensor]:
            # Made once per kept image, as uint8 copies of that image alone (evaluation_row):
            # a slice of the batch would keep the whole batch alive (memory bounded by
            # num_examples, not by the batch size or the number of batches).
            if not kept:
                kept.extend(evaluation_row(l_lowres, rgb, rgb_joint, target, text))
                if exemplar is not None:  # the exemplar column, at the images' size
                    kept.append(own_uint8(resize_uint8(exemplar[None].to(torch.uint8), tuple(target.shape[-2:]))[0]))
            return kept

        psnr = row["psnr"]
        if len(self.best) < n or psnr > self.best[-1][0]:
            self.best = sorted([*self.best, (psnr, row["index"], images())], key=lambda e: (-e[0], e[1]))[:n]
        if len(self.worst) < n or psnr <= self.worst[-1][0]:  # <=: a later tie ranks worse
            # The exact reverse of the best order (ties included), so that the best k and the
            # worst k of 2k or more images never share a photo.
            self.worst = sorted([*self.worst, (psnr, row["index"], images())], key=lambda e: (e[0], -e[1]))[:n]
        if self.grid_category and self.grid_category in row["categories"] and len(self.category_examples) < n:
            self.category_examples.append(images())

    def best_worst_pairs(self) -> list[tuple[tuple[float, int, list[Tensor]], tuple[float, int, list[Tensor]]]]:
        """Rows of ``best_worst.png``: (best, worst) pairs, best first. With fewer than
        2 x ``num_examples`` photos each side gets half of them, so no photo appears twice."""
        shown = min(len(self.best), len(self.worst), len(self.rows) // 2)
        return list(zip(self.best[:shown], self.worst[:shown]))


def excluded_photos(photos: Mapping[str, str]) -> dict[str, Any]:
    """``{"count", "reasons": {reason: n}, "photos": {path: reason}}`` of photos left out."""
    reasons = count_reasons(photos.values())
    return {"count": len(photos), "reasons": {str(r): n for r, n in reasons.most_common()}, "photos": dict(photos)}


def photos_excluded_before_evaluation(datamodule: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``(excluded when the cache was built, excluded at start-up)`` for the evaluated split:
    the cache's index (null without a cache) and the source's start-up checks (a photo in
    both is counted where the cache lists it)."""
    cache = getattr(datamodule, "image_cache", None)
    at_build = dict(cache.splits["val"].excluded) if cache is not None else None
    source = getattr(datamodule, "source", None)
    at_start = source.excluded_from_validation() if source is not None else {}
    at_start = {path: reason for path, reason in at_start.items() if path not in (at_build or {})}
    return (None if at_build is None else {"cache": str(cache.root), **excluded_photos(at_build)}), excluded_photos(at_start)


def not_scored_lines(metrics: Mapping[str, Any]) -> list[str]:
    """metrics.md's account of the photos not scored, one line per stage."""

    def counted(entry: Mapping[str, Any]) -> str:
        reasons = ", ".join(f"{n} {r}" for r, n in entry["reasons"].items())
        return f"{entry['count']}" + (f" ({reasons})" if reasons else "")

    lines = []
    build = metrics.get("excluded_at_cache_build")
    if build is not None:
        lines.append(f"- excluded when the cache `{build['cache']}` was built: {counted(build)}")
    lines.append(f"- excluded at start-up (the source's checks, before the split): {counted(metrics['excluded_at_start_up'])}")
    skipped = metrics["skipped_photos"]
    lines.append(f"- skipped while evaluating (could not be decoded or used): {len(skipped)}"
                 + (": " + ", ".join(f"`{k}`" for k in skipped[:20]) + (" ..." if len(skipped) > 20 else "") if skipped else ""))
    return ["Photos not scored (listed in metrics.json):", "", *lines, ""]


def _group_rows(rows: list[dict[str, Any]], field: str, guided: bool = False) -> dict[str, dict[str, Any]]:
    """Mean metrics of the images in each group (an image counts in every group it belongs to)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        for name in row[field] or ["(no annotations)"]:
            groups[name].append(row)
    table = {}
    for name, members in groups.items():
        summary = summarize_rows(members, guided)
        summary["gain_over_gray"] = summary["psnr"] - summary["psnr_gray"]
        table[name] = summary
    return dict(sorted(table.items(), key=lambda kv: kv[1]["psnr"]))


def _per_image(rows: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Metric -> ``(N,)`` float64 over ``rows``; a metric that is null in the rows (protocol 2
    of a guided model) is left out, so :func:`summarize` leaves it out too."""
    keys = [k for k in (*PER_IMAGE_METRICS, "psnr_gray") if rows and rows[0].get(k) is not None]
    return {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in keys}


def summarize_rows(rows: list[dict[str, Any]], guided: bool) -> dict[str, Any]:
    """Dataset-level metrics of per-image ``rows`` (:func:`~joint_colsr.metrics.summarize`, plus
    ``psnr_gray``); protocol-2 keys null for a guided model."""
    metrics: dict[str, Any] = summarize(_per_image(rows))
    metrics["psnr_gray"] = float(sum(r["psnr_gray"] for r in rows) / len(rows))
    if guided:
        metrics.update(dict.fromkeys(PROTOCOL2_METRICS))
    return metrics


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 1.5 else f"{value:.2f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def describe_model(cfg: DictConfig, system: pl.LightningModule) -> str:
    if cfg.get("baseline"):
        return f"baseline={cfg.baseline}"
    net = getattr(system, "net", system)
    kind = getattr(net, "training_kind", None)  # cascades: "two-stage" or "end to end"
    return f"{type(net).__name__}{f' [{kind}]' if kind else ''} ({Path(str(cfg.ckpt_path)).name})"


def prepare_test_data(cfg: DictConfig) -> None:
    """Point ``cfg.data`` at what evaluation scores (in place): every file of a folder, and
    val2017 for COCO (training validates on a slice of train2017). ``compare`` checks its
    test set through the same rule."""
    with open_dict(cfg):
        # Sources that split a folder by file: evaluation scores every file.
        if "val_fraction" in cfg.data.get("source", {}):
            cfg.data.source.val_fraction = 1.0
        # COCO: training validated on a held-out slice of train2017; evaluation scores val2017.
        if "validation" in cfg.data.get("source", {}):
            cfg.data.source.validation = "val2017"


def evaluation_scales(cfg: DictConfig, system: pl.LightningModule) -> tuple[float, ...] | None:
    """``scales`` of the eval config, checked: numbers > 1 that the model can serve (a
    fixed-scale model only its own); None when not set (the model's own scale, as always)."""
    raw = cfg.get("scales")
    if raw is None:
        return None
    values = [raw] if isinstance(raw, (int, float)) else list(raw)
    input_size, output_size = int(cfg.data.input_size), int(cfg.data.output_size)
    try:
        scales = check_scales(values, "scales", input_size, 2**31)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not getattr(getattr(system, "net", system), "any_scale", False):
        others = [f"{s:g}" for s in scales if target_side(input_size, s) != output_size]
        if others:
            raise ConfigError(
                f"scales={[f'{s:g}' for s in scales]}: {describe_model(cfg, system)} is fixed-scale "
                f"(x{output_size / input_size:.4g}: {input_size} -> {output_size} pixels) and cannot be scored at x{', x'.join(others)}: "
                "train an any-scale model (model.net.upsampler=implicit, data.scale_range=[min,max]), or evaluate "
                f"this one at scales=[{output_size / input_size:.4g}]")
    return scales


def trained_scale_range(system: pl.LightningModule) -> tuple[float, float] | None:
    """``(min, max)`` scales a checkpoint was trained on (its data task); None for a baseline."""
    task = getattr(system, "data_task", None)
    if not task:
        return None
    if task.get("scale_range"):
        low, high = task["scale_range"]
        return float(low), float(high)
    native = int(task["output_size"]) / int(task["input_size"])
    return native, native


def scale_summaries(rows: list[dict[str, Any]], scales: tuple[float, ...], guided: bool,
                    trained: tuple[float, float] | None, crops: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """``by_scale``: per scale label, the summary of its rows, the bicubic baseline's means on
    the same images, the Y-PSNR border and whether the scale lies outside the training range."""
    out = {}
    for scale in scales:
        label = scale_label(scale)
        members = [r for r in rows if r["scale"] == label]
        summary = summarize_rows(members, guided)
        for key in BICUBIC_METRICS:
            summary[key] = float(sum(r[key] for r in members) / len(members))
        summary["y_crop_border"] = crops[label]
        # 0.01: a scale written rounded (2.67 for 256/96) is not outside the range it ends.
        summary["extrapolation"] = trained is not None and not trained[0] - 1e-2 <= scale <= trained[1] + 1e-2
        out[label] = summary
    return out


def score_fixed_checkpoint(cfg: DictConfig, path: str, datamodule: Any, trainer_factory: Callable[[], pl.Trainer]) -> dict[str, Any]:
    """A fixed-scale checkpoint scored at its own scale on the same photos and protocol (for the per-scale plot)."""
    from joint_colsr.assembly import load_inference_system

    file = Path(str(path)).expanduser()
    system = load_inference_system(path, "fixed_ckpts")
    task = system.data_task or {}
    input_size = int(cfg.data.input_size)
    if int(task.get("input_size", -1)) != input_size:
        raise ConfigError(f"fixed_ckpts: {path} takes {task.get('input_size')}-pixel inputs, the evaluated model {input_size}")
    scale = int(task["output_size"]) / input_size
    if target_side(input_size, scale) > int(cfg.data.output_size):
        raise ConfigError(f"fixed_ckpts: {path} is x{scale:.4g}, beyond the largest of scales=[...]: add it to scales")
    label = scale_label(round(scale, 2))
    datamodule.val_scales = (scale,)
    evaluator = Evaluator(system, 0, 0, None, {scale_label(scale): resolve_crop_border("auto", input_size, int(task["output_size"]))},
                          None)
    trainer_factory().test(evaluator, datamodule=datamodule, verbose=False)
    summary = summarize_rows(evaluator.rows, evaluator.guided)
    return {"ckpt_path": str(path), "model": f"{type(system.net).__name__} ({file.name})", "scale": label,
            **{k: summary.get(k) for k in ("psnr", "psnr_joint", "psnr_y")}}


def plot_by_scale(metrics: Mapping[str, Any], path: Path) -> Path:
    """``by_scale.png``: PSNR (GT L*, own L*) and Y-PSNR against scale, the model beside the
    bicubic baseline and any fixed-scale checkpoints; extrapolated scales are shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_scale = metrics["by_scale"]
    xs = [float(label) for label in by_scale]
    panels = [("psnr", "PSNR, GT L* (dB)", None), ("psnr_joint", "PSNR, own L* (dB)", "bicubic_psnr_joint"),
              ("psnr_y", "Y-PSNR (dB)", "bicubic_psnr_y")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110)
    for ax, (key, title, bicubic) in zip(axes, panels):
        ys = [by_scale[label].get(key) for label in by_scale]
        if all(y is not None for y in ys):
            ax.plot(xs, ys, marker="o", color="C0", label=metrics["model"][:40])
        if bicubic:
            ax.plot(xs, [by_scale[label][bicubic] for label in by_scale], marker="s", linestyle="--", color="C1",
                    label="bicubic (a*=b*=0)")
        for i, run in enumerate(metrics.get("fixed_ckpts") or []):
            if run.get(key) is not None:
                ax.plot([float(run["scale"])], [run[key]], marker="^", linestyle="none", markersize=9, color=f"C{2 + i}",
                        label=run["model"][:40])
        for label, entry in by_scale.items():
            if entry.get("extrapolation"):
                ax.axvspan(float(label) - 0.1, float(label) + 0.1, color="0.85", zorder=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("scale (output / input side)")
        ax.set_xticks(xs, list(by_scale), rotation=20)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{metrics['num_images']} images of '{metrics['data']}' (grey band: outside the training range)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` (or ``cfg.baseline``) on ``cfg.data``; write the run's files; return the metrics."""
    system = build_eval_system(cfg)
    prepare_test_data(cfg)
    protocol = str(cfg.get("exemplar") or "none")
    if protocol not in EVAL_EXEMPLARS:
        raise ConfigError(f"exemplar must be one of {', '.join(EVAL_EXEMPLARS)}, got {protocol!r}")
    with open_dict(cfg):
        cfg.data.val_exemplar = protocol
    check_config(cfg, groups=("data", "trainer"))
    scales = evaluation_scales(cfg, system)
    if cfg.get("fixed_ckpts") and not scales:
        raise ConfigError("fixed_ckpts=[...] are drawn in the per-scale plot: set scales=[...] too")
    output_dir = start_run(cfg)
    input_size = int(cfg.data.input_size)
    crop = resolve_crop_border(cfg.get("crop_border"), input_size, cfg.data.output_size)
    num_examples = int(cfg.get("num_examples", 6))
    crops, example_scale = None, None
    if scales:
        with open_dict(cfg):  # one reference image per photo, the largest target: the same targets for every model
            cfg.data.output_size = max(target_side(input_size, s) for s in scales)
        crops = {scale_label(s): resolve_crop_border(cfg.get("crop_border"), input_size, target_side(input_size, s)) for s in scales}
        example_scale = scale_label(scales[-1])
    datamodule = build_datamodule(cfg)
    if scales:
        datamodule.val_scales = scales
    evaluator = Evaluator(system, crop, num_examples, cfg.get("grid_category"), crops, example_scale)
    trainer = build_trainer(cfg)
    trainer.test(evaluator, datamodule=datamodule, verbose=False)
    if not trainer.is_global_zero:
        return {}
    fixed_runs = [score_fixed_checkpoint(cfg, path, datamodule, lambda: build_trainer(cfg)) for path in (cfg.get("fixed_ckpts") or [])]

    rows = evaluator.rows
    if not rows:
        raise RuntimeError(f"no usable image to evaluate: every photo was skipped ({evaluator.skipped_keys[:10]})")
    metrics = summarize_rows(rows, evaluator.guided)
    if scales:
        metrics["num_images"] = len({r["index"] for r in rows})
        metrics["scales"] = [scale_label(s) for s in scales]
        metrics["by_scale"] = scale_summaries(rows, scales, evaluator.guided, trained_scale_range(system), crops)
        metrics["fixed_ckpts"] = fixed_runs
    metrics["uses_ground_truth_l"] = evaluator.guided
    metrics["exemplar"] = protocol
    metrics["uses_ground_truth_colour"] = protocol == "warped_gt"
    closeness = [r["exemplar_ab_intersection"] for r in rows if r.get("exemplar_ab_intersection") is not None]
    metrics["exemplar_ab_intersection"] = sum(closeness) / len(closeness) if closeness else None
    metrics["skipped"] = len(evaluator.skipped_keys)
    metrics["skipped_photos"] = evaluator.skipped_keys
    metrics["excluded_at_cache_build"], metrics["excluded_at_start_up"] = photos_excluded_before_evaluation(datamodule)
    metrics.update(
        model=describe_model(cfg, system),
        ckpt_path=str(cfg.ckpt_path) if cfg.get("ckpt_path") else None,
        baseline=cfg.get("baseline"),
        data=datamodule.source_name,
        data_root=str(cfg.data.get("root")) if cfg.data.get("root") else None,
        input_size=int(cfg.data.input_size),
        output_size=int(cfg.data.output_size),
        y_crop_border=crop if not scales else None,
    )
    if any(r["supercategories"] for r in rows):
        metrics["by_supercategory"] = _group_rows(rows, "supercategories", evaluator.guided)
    write_outputs(output_dir, metrics, rows, evaluator, crop)
    _print_summary(metrics, output_dir)
    return metrics


def write_outputs(output_dir: Path, metrics: dict[str, Any], rows: list[dict[str, Any]], evaluator: Evaluator, crop: int) -> None:
    write_json(output_dir / "metrics.json", metrics)

    header = ["model", "images", *TABLE_COLUMNS.values()]
    md = ["# Evaluation", "", f"data: `{metrics['data']}`" + (f" (`{metrics['data_root']}`)" if metrics.get("data_root") else "")
          + (f", {metrics['input_size']} -> {metrics['output_size']}" if "by_scale" not in metrics
             else f", {metrics['input_size']}-pixel inputs at x{', x'.join(metrics['scales'])}"), ""]
    name = f"{metrics['model']} ({GUIDED_MARK})" if metrics.get("uses_ground_truth_l") else metrics["model"]
    if metrics.get("exemplar", "none") != "none":
        name += f" [exemplar: {metrics['exemplar']}" + (", GT-colour guided: an upper bound]" if metrics["uses_ground_truth_colour"] else "]")
    cells = ["" if metrics.get(k) is None else metrics[k] for k in TABLE_COLUMNS]
    md.append(markdown_table(header, [[name, metrics["num_images"], *cells]]))
    if "by_scale" in metrics:
        md += ["The row above: means over every (image, scale) of the scales below.", "", "## By scale", ""]
        cols = ["psnr", "psnr_joint", "psnr_y", "bicubic_psnr_joint", "bicubic_psnr_y", "ssim", "colorfulness_gap"]
        md.append(markdown_table(["scale", "output side", "Y border", *cols],
                                 [[label + (" (extrapolation)" if e["extrapolation"] else ""), int(round(float(label) * metrics["input_size"])),
                                   e["y_crop_border"], *("" if e.get(c) is None else e[c] for c in cols)]
                                  for label, e in metrics["by_scale"].items()]))
        if metrics.get("fixed_ckpts"):
            md += ["Fixed-scale checkpoints, each at its own scale (same photos, same protocol):", ""]
            md.append(markdown_table(["checkpoint", "scale", "psnr", "psnr_joint", "psnr_y"],
                                     [[r["model"], r["scale"], *("" if r.get(c) is None else r[c] for c in ("psnr", "psnr_joint", "psnr_y"))]
                                      for r in metrics["fixed_ckpts"]]))
        md += ["Every target of a photo is its one reference image (squash-resized to the largest target) resized down by "
               "the suite's bicubic, its input L* made from that target; bicubic_*: a*=b*=0 with the input L* upscaled, "
               "on the same images. Y-PSNR crops ceil(scale) pixels. Plot: by_scale.png.", ""]
    md += [PROTOCOL_NOTE.format(crop=crop if "by_scale" not in metrics else "ceil(scale)"), ""]
    md += not_scored_lines(metrics)
    if "by_supercategory" in metrics:
        md += ["## By COCO supercategory (worst first; an image counts in every supercategory it shows)", ""]
        cols = ["psnr", "psnr_joint", "psnr_gray", "gain_over_gray", "colorfulness_gap", "auc_ab"]
        md.append(markdown_table(["supercategory", "images", *cols],
                                 [[name, s["num_images"], *("" if s.get(c) is None else s[c] for c in cols)]
                                  for name, s in metrics["by_supercategory"].items()]))
    (output_dir / "metrics.md").write_text("\n".join(md))

    fields = ["index", "key", "categories", "supercategories", *PER_IMAGE_METRICS, "psnr_gray"]
    if "by_scale" in metrics:
        fields = ["index", "scale", *fields[1:], *BICUBIC_METRICS]
    if metrics.get("exemplar", "none") != "none":
        fields = [*fields[:2], "exemplar", *fields[2:], "exemplar_ab_intersection"]
    with open(output_dir / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (r["index"], float(r.get("scale") or 0))):
            writer.writerow({**{k: ("" if v is None else v) for k, v in row.items()}, "categories": ";".join(row["categories"]), "supercategories": ";".join(row["supercategories"])})

    pairs = evaluator.best_worst_pairs()
    if pairs:
        # Best on the left, worst on the right; each row's first image names its PSNR (GT L* / own L*).
        grid_rows = [b[2] + w[2] for b, w in pairs]
        columns = [*EVALUATION_COLUMNS, *(["exemplar"] if len(grid_rows[0]) > 2 * len(EVALUATION_COLUMNS) else [])]
        titles = [f"best: {columns[0]}", *columns[1:], f"worst: {columns[0]}", *columns[1:]]
        save_png(make_grid(grid_rows, column_titles=titles), output_dir / "best_worst.png")
    if evaluator.category_examples:
        columns = [*EVALUATION_COLUMNS, *(["exemplar"] if len(evaluator.category_examples[0]) > len(EVALUATION_COLUMNS) else [])]
        save_png(make_grid(evaluator.category_examples, column_titles=columns), output_dir / "category.png")
    if "by_scale" in metrics:
        plot_by_scale(metrics, output_dir / "by_scale.png")


def _print_summary(metrics: dict[str, Any], output_dir: Path) -> None:
    build = metrics.get("excluded_at_cache_build")
    excluded = metrics["excluded_at_start_up"]["count"] + (build["count"] if build else 0)
    where = "at cache build and start-up" if build else "at start-up"
    own = f"{GUIDED_MARK}, no own L*" if metrics.get("uses_ground_truth_l") else f"{metrics['psnr_joint']:.2f} dB (own L*)"
    print_run_summary(output_dir, [
        f"{metrics['model']} on {metrics['num_images']} images of '{metrics['data']}': "
        f"PSNR {metrics['psnr']:.2f} dB (GT L*), {own}, "
        f"gray {metrics['psnr_gray']:.2f} dB; SSIM {metrics['ssim']:.4f}; tables in {output_dir / 'metrics.md'}",
        f"not scored: {excluded} photos excluded before evaluating ({where}), {metrics['skipped']} skipped while evaluating",
    ])


@hydra_command("eval")
def main(cfg: DictConfig) -> float | None:
    metrics = evaluate(cfg)
    return metrics.get("psnr")


if __name__ == "__main__":
    main()
