"""Joint or cascade? One command: ``python -m joint_colsr.compare [options]`` (``make compare``).

Trains every contender at **equal training compute**, over several seeds, evaluates each on
one test set, and writes ``comparison.md``, ``comparison.json``, ``comparison.png`` (the
metric per model) and ``paired.png`` (the paired differences behind the verdict) into ``--out``:

* contenders (``--models``): ``joint_paper`` (the paper's joint net), ``residual_joint``
  (Section IV's net, predicting its own L*), ``cascade_end_to_end`` (``model=cascade``:
  colorizer + upscaler trained together), ``two_stage_colorize_first`` and
  ``two_stage_upscale_first`` (``python -m joint_colsr.two_stage``: the paper's cascade, two
  networks trained separately), ``ic_only`` (IC-only + bicubic L*) and, only when named,
  ``srgan`` (residual_joint's generator against a discriminator; the discriminator's
  training FLOPs count in its budget, :func:`net_costs`), and, only when named,
  ``joint_exemplar`` and its cascade counterpart ``cascade_exemplar`` (an exemplar-guided
  colorizer, then an upscaler, end to end), each trained on a mix of exemplars with 30 % of the
  samples left without one;
  ``--eval exemplar=none`` scores its automatic mode, ``exemplar=random|same_category`` every
  row with that protocol: models without exemplar input ignore it, and the setup says which
  protocol the rows carry);
* budget: the training FLOPs of ``--budget-steps`` steps of the reference model
  (``--reference``, the joint net) at its batch size, counted with ``torch.utils.flop_counter``
  on one forward + backward pass per sample; every run trains on the whole number of samples
  that spends the budget within 2 % (``callbacks.sample_budget``: the last batch is cut
  short), a two-stage cascade half of it per stage. A budget too small for that stops at
  start-up with the smallest one that fits. Wall time (``fit_seconds``) is recorded too;
* ``--match inference_flops`` or ``params``: each contender's ``model.net.width_mult`` is
  solved so that the quantity matches the reference's within 5 % (training FLOPs stay equal
  by the budget); every row shows params, inference FLOPs per image and training FLOPs;
* per model and metric: mean and 95 % Student-t confidence interval over the seeds, in
  both protocols (``psnr``: ground-truth L*, ``psnr_joint``: the model's own L*), plus
  ``psnr_y`` and SSIM;
* per model and seed: the mean of every metric (``per_seed``);
* per model and metric: the paired difference against the reference (same photos, same
  seeds) with an interval that carries seed and photo variance (:func:`paired_interval`)
  and a verdict in words (:func:`verdict`: who is better, or "no detectable difference",
  "too few seeds" under 3, and the smallest difference the run could detect); per COCO
  supercategory a seed-averaged bootstrap over photos (``paired_vs_reference``);
* baselines: ``eval baseline=gray`` and ``baseline=bicubic`` on the same test set, and per
  model its paired psnr_joint difference against bicubic (``vs_bicubic``): a model not
  above bicubic learned nothing detectable;
* a finished contender/seed (same contender, seed, overrides, budget and code:
  ``compare_run.json``) is reused, not trained again;
* a model fed the ground-truth L* would be marked "GT-L* guided" (none of the contenders is);
* ``--scale S``: every contender is trained for and evaluated at magnification ``S``
  (``data.output_size = round(input_size * S)``, ``eval scales=[S]``), and the default
  contenders gain ``joint_paper_any_scale``: the paper's net with the implicit upsampler,
  trained on scales drawn from :data:`ANY_SCALE_RANGE` per batch (targets from
  ``ceil(input_size * max)``-pixel references) on the same FLOP budget, its checkpoint chosen
  at ``S`` like every other contender's (``data.val_scales=[S]``). Its training FLOPs per
  sample are counted at the range's mean pixel count (FLOPs grow with the output's pixels);
  its inference FLOPs at ``S``. ``S`` outside the range is extrapolation for it (said in the table).

Every stage is the suite's own command (``train``, ``two_stage``, ``eval``) with ``--train``
overrides (data, trainer, debug) and ``--eval`` overrides (the test set), run in this process
one after another (``run/in_process.py``: no interpreter start-up per run), or with
``--jobs N`` as N subprocesses at once; each run's output goes to ``<contender>/seed<N>.log``. The tiny form (seconds per run)::

    python -m joint_colsr.compare --seeds 0 1 --budget-steps 2 --train debug=tiny --eval data.val_views=1
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from joint_colsr import CONFIG_DIR
from joint_colsr.run.hydra_callbacks import GUIDED_MARK, confidence_interval

log = logging.getLogger(__name__)

#: Contender -> how it is trained: ``("train", overrides)`` or ``("two_stage", order)``.
CONTENDERS: dict[str, tuple[str, Any]] = {
    "joint_paper": ("train", ["model=joint_paper"]),
    "residual_joint": ("train", ["model=residual_joint"]),
    "cascade_end_to_end": ("train", ["model=cascade"]),
    "two_stage_colorize_first": ("two_stage", "colorize_first"),
    "two_stage_upscale_first": ("two_stage", "upscale_first"),
    "ic_only": ("train", ["model=ic_only"]),
    "srgan": ("train", ["model=srgan"]),
    "joint_paper_any_scale": ("train", ["model=joint_paper", "model.net.upsampler=implicit"]),
    "joint_exemplar": ("train", ["model=joint_exemplar", "data.exemplar=mix", "data.exemplar_drop=0.3"]),
    "cascade_exemplar": ("train", ["model=cascade_exemplar", "data.exemplar=mix", "data.exemplar_drop=0.3"]),
}
#: Contenders trained over a range of scales (their data overrides: :func:`any_scale_overrides`).
ANY_SCALE_CONTENDERS = ("joint_paper_any_scale",)
#: The scales any-scale contenders train on (drawn per batch).
ANY_SCALE_RANGE = (1.5, 4.0)
#: Contenders ``--models`` trains when not told: all but the optional ``srgan`` (the
#: residual_joint generator trained adversarially, a question of its own: ``--models ... srgan``).
#: Contenders only trained when named: their own questions (adversarial training; exemplars).
ON_REQUEST = ("srgan", "joint_exemplar", "cascade_exemplar")
DEFAULT_MODELS = [name for name in CONTENDERS if name not in ON_REQUEST and name not in ANY_SCALE_CONTENDERS]


def default_models(scale: float | None) -> list[str]:
    """``--models`` when not given: :data:`DEFAULT_MODELS`, and the any-scale contenders with ``--scale``."""
    return [*DEFAULT_MODELS, *(ANY_SCALE_CONTENDERS if scale is not None else ())]


def any_scale_overrides(name: str, train: list[str]) -> list[str]:
    """The data overrides of an any-scale contender (none for the others): the training range
    :data:`ANY_SCALE_RANGE`, reference images large enough for its top, and validation (the
    checkpoint choice) at the scale every other contender trains for (``data.output_size / data.input_size``)."""
    if name not in ANY_SCALE_CONTENDERS:
        return []
    data = _compose_train([*CONTENDERS[name][1], *train]).data
    r, side = int(data.input_size), int(data.output_size)
    low, high = ANY_SCALE_RANGE
    return [f"data.scale_range=[{low:g},{high:g}]", f"data.output_size={max(side, math.ceil(r * high))}",
            f"data.val_scales=[{side / r:.6g}]"]
#: Metrics compared (per image in ``per_image.csv``).
METRICS = ("psnr", "psnr_joint", "ssim", "ssim_joint", "psnr_y")


def _compose(config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir  # here, not above: `--help` needs neither Hydra nor torch
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


@functools.lru_cache(maxsize=64)
def _composed_train(overrides: tuple[str, ...]):
    return _compose("train", list(overrides))


def _compose_train(overrides: list[str]):
    """The train config under ``overrides`` (composed once per distinct list: planning asks often)."""
    return copy.deepcopy(_composed_train(tuple(overrides)))


#: The embedded photos held out as the test set unless ``--eval`` picks another data set: two
#: scenes no contender trains or validates on (``--test-photos``).
SAMPLES_TEST_PHOTOS = ("coffee", "flower")


def held_out_split(train: list[str], test_photos: list[str]) -> tuple[list[str], list[str]]:
    """``(train overrides, eval overrides)`` that hold ``test_photos`` of the embedded photos
    out of every training run (training and validation sides) and test on them alone."""
    from joint_colsr.data.sources import SAMPLE_PHOTOS

    unknown = [p for p in test_photos if p not in SAMPLE_PHOTOS]
    if unknown:
        raise SystemExit(f"--test-photos {unknown} are not embedded photos: pick among {list(SAMPLE_PHOTOS)}")
    test_groups = {SAMPLE_PHOTOS[p][0] for p in test_photos}
    rest = [p for p in SAMPLE_PHOTOS if SAMPLE_PHOTOS[p][0] not in test_groups]
    listed = lambda names: "[" + ",".join(names) + "]"  # noqa: E731
    # eval's source needs a training side too (unused by eval): the first photo left
    return ([*train, f"++data.source.photos={listed(rest)}"],
            [f"++data.source.photos={listed([*test_photos, rest[0]])}", f"data.source.val_photos={listed(test_photos)}"])


def default_test_set(model: list[str], train: list[str], eval_overrides: list[str],
                     test_photos: list[str]) -> tuple[list[str], list[str]]:
    """``(train, eval)`` overrides with a held-out test set when ``eval_overrides`` picks no
    data: on the embedded photos ``test_photos`` leave every training run
    (:func:`held_out_split`); on COCO the test set is val2017 (training validates on its
    train2017 slice), with the training's root, categories and image cap. Any other data:
    as given (``--eval`` must name the test photos)."""
    if any(o.lstrip("+~").startswith(("data=", "data.source", "data.root")) for o in eval_overrides):
        return train, eval_overrides
    data = _compose_train([*model, *train]).data
    target = str(data.source.get("_target_", ""))
    if "SamplePhotos" in target:
        train, held_out = held_out_split(train, test_photos)
        log.info("compare: test set: the embedded photos %s, held out of every training run", test_photos)
        return train, [*held_out, *eval_overrides]
    if "CocoSource" in target:
        coco = ["data=coco", f"data.root={data.root}"]
        if data.get("categories") is not None:
            coco.append(f"data.categories={json.dumps(list(data.categories))}")
        if data.get("max_images") is not None:
            coco.append(f"data.max_images={int(data.max_images)}")
        log.info("compare: test set: COCO val2017 under %s", data.root)
        return train, [*coco, *eval_overrides]
    return train, eval_overrides


def check_test_set(train: list[str], eval_overrides: list[str]) -> dict[str, Any]:
    """The test set and the result of checking it against what training reads: the groups
    (scenes; for files, the files) of the eval source's test side against both sides of
    the training source (training and validation)."""
    from hydra.utils import instantiate

    from joint_colsr.eval import prepare_test_data

    train_source = instantiate(_compose_train(train).data.source)
    eval_cfg = _compose("eval", eval_overrides)
    prepare_test_data(eval_cfg)  # what eval itself will score
    test_source = instantiate(eval_cfg.data.source)
    seen = {item.group for side in train_source.split() for item in side}
    tested = {item.group for item in test_source.validation_items()}
    overlap = sorted(seen & tested)
    return {"name": f"{test_source.name}: {', '.join(sorted(tested))}" if len(tested) <= 12 else test_source.name,
            "photos": len(test_source.validation_items()), "disjoint_from_training_and_validation": not overlap,
            "overlap": overlap[:20]}


def training_flops_per_sample(overrides: list[str]) -> int:
    """FLOPs of one training forward + backward pass of one sample of the configured model
    (a multiply-add counts 2; on the meta device: nothing is computed)."""
    return net_costs(overrides)["train_flops_per_sample"]


def _pass_flops(module: Any, x: Any, backward: bool) -> int:
    """FLOPs of ``module(x)`` (and its backward pass to every parameter and input that needs it)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = module(x)
        outputs = [out] if not isinstance(out, dict) else [v for v in out.values() if v.requires_grad]
        if backward and outputs:
            sum(v.float().pow(2).mean() for v in outputs).backward()
    return int(counter.get_total_flops())


def net_costs(overrides: list[str], width_mult: float | None = None, only: str | None = None) -> dict[str, int]:
    """The configured model's trainable ``params`` (the network that runs at inference),
    ``inference_flops`` (one forward pass of one image) and ``train_flops_per_sample``,
    counted with ``torch.utils.flop_counter`` on the meta device (a multiply-add counts 2).

    Training counts the network's forward + backward pass and, for a GAN, what trains
    beside it: the discriminator's forward + backward on the real and the fake image (its
    own step) and once more for the generator's adversarial term after the warm-up
    (``model.discriminator_warmup_fraction`` of the run; all of it under a fixed warm-up
    count), plus a perceptual network's pass on the real image and forward + backward on
    the fake one. Optimizer updates and the loss arithmetic are not counted (elementwise,
    negligible beside convolutions). ``width_mult``: ``model.net.width_mult`` instead of the
    configured one; ``only``: count that one quantity (the others are absent). A net trained
    with exemplars (``data.exemplar``) counts the exemplar path for the share of samples that
    have one (``1 - data.exemplar_drop``)."""
    import functools

    import torch

    from joint_colsr.assembly import build_system
    from joint_colsr.model_table import forward_flops
    from joint_colsr.nets import count_parameters

    cfg = _compose_train(overrides)
    if width_mult is not None:
        cfg.model.net.width_mult = float(width_mult)
    with torch.device("meta"):  # no weights are allocated: a solved width may try nets 16x as wide
        system = build_system(cfg)
    net = system.net
    params = count_parameters(net)
    if only == "params":
        return {"params": int(params)}
    r, s = int(cfg.data.input_size), int(cfg.data.output_size)
    eval_side = train_side = s
    if cfg.data.get("scale_range") is not None:
        # Any-scale training: FLOPs grow with the output's pixels, so a sample costs what one
        # at the mean pixel count of the range costs (s uniform in [lo, hi]: E[s^2]); the net
        # is evaluated (and chosen) at data.val_scales' first scale.
        low, high = (float(v) for v in cfg.data.scale_range)
        train_side = int(round(r * math.sqrt((low * low + low * high + high * high) / 3)))
        eval_side = int(round(r * float((cfg.data.get("val_scales") or [high])[0])))
    inference = int(forward_flops(net, r, eval_side))
    if only == "inference_flops":
        return {"inference_flops": inference}
    net = net.to("meta").train()
    s = train_side
    takes_exemplar = getattr(net, "takes_exemplar", False)
    if getattr(net, "needs_l_highres", False):
        net = functools.partial(net, l_highres=torch.zeros(1, 1, s, s, device="meta"))
    if getattr(net, "any_scale", False):
        net = functools.partial(net, out_hw=(s, s))
    train = _pass_flops(net, torch.zeros(1, 1, r, r, device="meta"), backward=True)
    exemplar_share = 0.0 if cfg.data.get("exemplar", "none") == "none" else 1.0 - float(cfg.data.get("exemplar_drop") or 0.0)
    if takes_exemplar and exemplar_share:
        # Samples with an exemplar run the exemplar path too (the trunk a second time): their share at that cost.
        side = int(cfg.data.get("exemplar_size") or s)
        steered = functools.partial(net, exemplar=torch.zeros(1, 3, side, side, device="meta"))
        train = int(round((1 - exemplar_share) * train + exemplar_share * _pass_flops(steered, torch.zeros(1, 1, r, r, device="meta"),
                                                                                         backward=True)))
    discriminator = getattr(system, "discriminator", None)
    if discriminator is not None:
        d = discriminator.to("meta").train()
        image = torch.zeros(1, d.in_channels, s, s, device="meta", requires_grad=True)
        warmup = cfg.model.get("discriminator_warmup_fraction") or 0.0
        train += int(round((2 + (1 - warmup)) * _pass_flops(d, image, backward=True)))
    perceptual = getattr(system, "perceptual", None)
    if perceptual is not None:
        p = perceptual.to("meta")
        rgb = torch.zeros(1, 3, s, s, device="meta", requires_grad=True)
        train += _pass_flops(p, rgb, backward=False) + _pass_flops(p, rgb, backward=True)
    return {"params": int(params), "inference_flops": inference, "train_flops_per_sample": train}


#: Each stage's training FLOPs must be within this fraction of its share of the budget.
BUDGET_TOLERANCE = 0.02
#: ``--match inference_flops`` / ``params``: the solved width must bring the quantity this close to the reference's.
MATCH_TOLERANCE = 0.05
MATCHES = ("train_flops", "inference_flops", "params")


def contender_stages(name: str, train: list[str]) -> list[tuple[str, list[str], float]]:
    """``(stage, train overrides, share of the budget)`` per separately trained network of a
    contender: one for a ``train`` contender, colorizer and upscaler (half each) for a
    two-stage cascade, the colorizer at the scale it runs at (as ``two_stage`` trains it)."""
    kind, spec = CONTENDERS[name]
    if kind == "train":
        return [("model", [*spec, *train], 1.0)]
    from joint_colsr.two_stage import colorizer_stage_overrides

    data = _compose_train(["model=ic_only", *train]).data
    return [("colorizer", ["model=ic_only", *train, *colorizer_stage_overrides(spec, int(data.input_size), int(data.output_size))], 0.5),
            ("upscaler", ["model=sr_only", *train], 0.5)]


def contender_costs(name: str, train: list[str], width_mult: float | None = None, only: str | None = None) -> dict[str, Any]:
    """:func:`net_costs` per stage (``stages``) and ``params``/``inference_flops`` summed over them."""
    stages = {stage: {**net_costs(overrides, width_mult, only), "share": share}
              for stage, overrides, share in contender_stages(name, train)}
    return {"stages": stages, **{q: sum(c[q] for c in stages.values()) for q in ("params", "inference_flops")
                                 if all(q in c for c in stages.values())}}


def stage_samples(budget: float, share: float, flops_per_sample: int) -> int | None:
    """Training samples that spend ``share`` of ``budget`` within :data:`BUDGET_TOLERANCE`, or
    ``None`` when no whole number of samples does (the budget is too small for this network)."""
    samples = round(budget * share / flops_per_sample)
    if samples < 1 or abs(samples * flops_per_sample / (budget * share) - 1) > BUDGET_TOLERANCE:
        return None
    return int(samples)


def minimum_budget_steps(costs: dict[str, dict[str, Any]], step_flops: float, start: int) -> int:
    """The smallest ``--budget-steps`` (from ``start`` up; ``step_flops``: one reference step)
    at which every stage of every contender fits :func:`stage_samples`."""
    bound = max(math.ceil(0.5 / BUDGET_TOLERANCE * c["train_flops_per_sample"] / c["share"] / step_flops)
                for entry in costs.values() for c in entry["stages"].values())
    for steps in range(max(1, start), max(start, bound) + 1):
        if all(stage_samples(steps * step_flops, c["share"], c["train_flops_per_sample"]) is not None
               for entry in costs.values() for c in entry["stages"].values()):
            return steps
    return max(start, bound)


def solve_width(name: str, train: list[str], quantity: str, target: float, base: float) -> tuple[float, dict[str, Any]]:
    """``model.net.width_mult`` for contender ``name`` whose ``quantity`` (``params`` or
    ``inference_flops``, :func:`contender_costs`) is closest to ``target``: bisection in
    log-width between ``base / 16`` and ``base * 16`` (channel counts round, so the quantity
    is a step function of the width); ``(width, costs at that width)``."""
    def costs(width: float) -> dict[str, Any]:
        return contender_costs(name, train, float(f"{width:.6g}"), only=quantity)

    lo, hi = math.log(base / 16), math.log(base * 16)
    at = {lo: costs(math.exp(lo)), hi: costs(math.exp(hi))}
    if at[lo][quantity] >= target or at[hi][quantity] <= target:
        edge = float(f"{math.exp(lo if at[lo][quantity] >= target else hi):.6g}")
        return edge, contender_costs(name, train, edge)
    for _ in range(14):  # the bracket shrinks to 1/16384 of its log-width: a fraction of a channel
        mid = (lo + hi) / 2
        at[mid] = costs(math.exp(mid))
        lo, hi = (mid, hi) if at[mid][quantity] < target else (lo, mid)
    best = float(f"{math.exp(min((lo, hi), key=lambda w: abs(at[w][quantity] / target - 1))):.6g}")
    return best, contender_costs(name, train, best)


def plan_budget(models: list[str], reference: str, train: list[str], budget_steps: int, match: str) -> dict[str, Any]:
    """Who trains on what: the budget (``budget_steps`` steps of ``reference`` at its batch
    size, in FLOPs) and per contender its ``train`` overrides (with a solved
    ``model.net.width_mult`` under ``match`` = ``inference_flops`` / ``params``), costs, and
    per stage the ``samples`` that spend its share of the budget within
    :data:`BUDGET_TOLERANCE`. A budget that cannot be met, or a quantity no width matches
    within :data:`MATCH_TOLERANCE`, stops here, before anything trains, naming the fix."""
    if match not in MATCHES:
        raise SystemExit(f"--match must be one of {list(MATCHES)}, got {match!r}")
    if CONTENDERS[reference][0] != "train":
        raise SystemExit(f"--reference must be one network trained by `train` (one of "
                         f"{[n for n, (k, _) in CONTENDERS.items() if k == 'train']}), got {reference}")
    ref_cfg = _compose_train([*CONTENDERS[reference][1], *train])
    batch_size = int(ref_cfg.data.batch_size)
    ref_costs = contender_costs(reference, train)
    step_flops = float(batch_size * ref_costs["stages"]["model"]["train_flops_per_sample"])
    contenders: dict[str, Any] = {}
    for name in models:
        overrides, width = [*train, *any_scale_overrides(name, train)], None
        if name == reference or match == "train_flops":
            costs = ref_costs if name == reference else contender_costs(name, overrides)
        else:
            target = float(ref_costs[match])
            base = float(_compose_train(contender_stages(name, overrides)[0][1]).model.net.width_mult)
            width, costs = solve_width(name, overrides, match, target, base)
            if abs(costs[match] / target - 1) > MATCH_TOLERANCE:
                raise SystemExit(f"--match {match}: no model.net.width_mult makes {name}'s {match} ({costs[match]:,} at width "
                                 f"{width:g}, the closest) come within {MATCH_TOLERANCE:.0%} of {reference}'s ({target:,.0f}); "
                                 "at tiny widths channel counts round too coarsely: raise the base width")
            overrides.append(f"model.net.width_mult={width:g}")
        contenders[name] = {"train": overrides, "width_mult": width, "params": costs["params"],
                            "inference_flops": costs["inference_flops"], "stages": costs["stages"]}
    budget = budget_steps * step_flops
    short = [(name, stage, c) for name, e in contenders.items() for stage, c in e["stages"].items()
             if stage_samples(budget, c["share"], c["train_flops_per_sample"]) is None]
    if short:
        name, stage, c = short[0]
        fits = minimum_budget_steps(contenders, step_flops, budget_steps)
        raise SystemExit(
            f"--budget-steps {budget_steps} ({budget / 1e9:.3g} GFLOP) is too small for equal training compute within "
            f"{BUDGET_TOLERANCE:.0%}: {name}" + (f" ({stage})" if stage != "model" else "") + f" costs "
            f"{c['train_flops_per_sample'] / 1e9:.3g} GFLOP per training sample, so its share buys "
            f"{budget * c['share'] / c['train_flops_per_sample']:.2f} samples and no whole number of them is within "
            f"{BUDGET_TOLERANCE:.0%}" + (f" (also: {', '.join(others)})" if (others := sorted({n for n, _, _ in short} - {name})) else "")
            + f"; the smallest budget that fits every contender is --budget-steps {fits}")
    for entry in contenders.values():
        for c in entry["stages"].values():
            c["samples"] = stage_samples(budget, c["share"], c["train_flops_per_sample"])
            c["train_flops"] = float(c["samples"] * c["train_flops_per_sample"])
        entry["train_flops"] = sum(c["train_flops"] for c in entry["stages"].values())
    return {"budget_flops": budget, "batch_size": batch_size, "step_flops": step_flops, "match": match, "contenders": contenders}


def _run(module: str, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
    """``python -m module *args``, its output appended to ``log_path``: in this process
    (:func:`~joint_colsr.run.in_process.run_command`, no interpreter start-up) unless ``env``
    sets variables for it (a CUDA device per parallel job), then as a subprocess."""
    log.info("compare: python -m %s %s", module, " ".join(args))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as output:
        if env is None:
            import contextlib
            import importlib

            from joint_colsr.run.in_process import CommandFailed, run_command

            try:
                with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                    run_command(importlib.import_module(module).main, args)
                failed = None
            except CommandFailed as err:
                failed = str(err)
        else:
            env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(
                filter(None, [str(Path(CONFIG_DIR).parent), os.environ.get("PYTHONPATH")]))}
            proc = subprocess.run([sys.executable, "-m", module, *args], env=env, stdout=output, stderr=subprocess.STDOUT)
            failed = None if proc.returncode == 0 else f"python -m {module} {' '.join(args)} failed (exit {proc.returncode})"
    if failed:
        raise RuntimeError(f"compare: {failed}; the end of its output ({log_path}):\n{log_path.read_text()[-4000:]}")


#: Every compare training ends on its sample budget (callbacks.sample_budget), not on epochs or steps.
_BUDGET_ARGS = ["trainer.max_epochs=-1", "++trainer.max_steps=-1"]


def train_contender(name: str, seed: int, run_dir: Path, train: list[str], plan: dict[str, Any],
                    env: dict[str, str] | None = None) -> dict[str, Any]:
    """Train one contender on its planned samples (``plan``: :func:`plan_budget`'s entry);
    ``{"ckpt", "samples", "steps", "train_flops", "fit_seconds"}``."""
    kind, spec = CONTENDERS[name]
    samples = {stage: p["samples"] for stage, p in plan["stages"].items()}
    if kind == "train":
        _run("joint_colsr.train", [*spec, *train, f"seed={seed}", *_BUDGET_ARGS,
                                   f"callbacks.sample_budget.samples={samples['model']}", f"hydra.run.dir={run_dir}"],
             run_dir.parent / f"{run_dir.name}.log", env=env)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        return {"ckpt": str(run_dir / "checkpoints" / "last.ckpt"), "samples": [samples["model"]],
                "steps": [metrics.get("global_step")], "train_flops": plan["train_flops"],
                "fit_seconds": metrics.get("fit_seconds")}
    quoted = lambda items: "[" + ",".join(json.dumps(i) for i in items) + "]"  # noqa: E731
    per_stage = {stage: quoted([f"callbacks.sample_budget.samples={n}"]) for stage, n in samples.items()}
    _run("joint_colsr.two_stage", [f"order={spec}", f"seed={seed}", f"overrides={quoted([*train, *_BUDGET_ARGS])}",
                                   f"colorizer_overrides={per_stage['colorizer']}", f"upscaler_overrides={per_stage['upscaler']}",
                                   f"hydra.run.dir={run_dir}"], run_dir.parent / f"{run_dir.name}.log", env=env)
    record = json.loads((run_dir / "two_stage.json").read_text())
    stages = record["stage_metrics"]
    return {"ckpt": record["cascade"], "samples": [samples["colorizer"], samples["upscaler"]],
            "steps": [stages[s].get("global_step") for s in ("colorizer", "upscaler")], "train_flops": plan["train_flops"],
            "fit_seconds": sum(float(stages[s].get("fit_seconds") or 0) for s in ("colorizer", "upscaler"))}


def read_per_image(path: Path) -> dict[str, dict[str, Any]]:
    """An eval ``per_image.csv``: ``{photo key: {metric: value or None, "supercategories": [...]}}``."""
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows[row["key"]] = {k: (float(row[k]) if row.get(k) not in (None, "") else None) for k in METRICS} | {
                "supercategories": [s for s in row.get("supercategories", "").split(";") if s]}
    return rows


def bootstrap_ci(values: np.ndarray, n: int = 10000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of ``values`` and a percentile bootstrap interval of it (``n`` resamples, seeded)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"n": int(len(values)), "mean": float(values.mean()), "ci_low": float(lo), "ci_high": float(hi)}


def photo_differences(model: dict[int, dict], reference: dict[int, dict], metric: str) -> dict[int, dict[str, float]]:
    """Per seed, per photo: ``model - reference`` of ``metric`` where both are finite (same seed, same photo)."""
    out: dict[int, dict[str, float]] = {}
    for seed in sorted(s for s in model if s in reference):
        ref = reference[seed]
        diffs = {key: row[metric] - ref[key][metric] for key, row in model[seed].items()
                 if key in ref and row[metric] is not None and ref[key][metric] is not None
                 and math.isfinite(row[metric]) and math.isfinite(ref[key][metric])}
        if diffs:
            out[seed] = diffs
    return out


def paired_differences(model: dict[int, dict], reference: dict[int, dict], metric: str) -> dict[str, Any] | None:
    """Per-image ``model - reference`` of ``metric`` (same seed, same photo), averaged over
    seeds per photo, with a bootstrap CI over photos; per supercategory where there are any."""
    per_photo: dict[str, list[float]] = {}
    groups: dict[str, list[str]] = {}
    for seed, diffs in photo_differences(model, reference, metric).items():
        for key, diff in diffs.items():
            per_photo.setdefault(key, []).append(diff)
            groups[key] = model[seed][key]["supercategories"]
    if not per_photo:
        return None
    keys = sorted(per_photo)
    diffs = np.array([np.mean(per_photo[k]) for k in keys])
    out: dict[str, Any] = bootstrap_ci(diffs)
    supers = sorted({s for k in keys for s in groups[k]})
    if supers:
        out["by_supercategory"] = {s: bootstrap_ci(np.array([d for k, d in zip(keys, diffs) if s in groups[k]])) for s in supers}
    return out


def per_seed_mean(rows: dict[str, dict[str, Any]], metric: str) -> float | None:
    """The mean of ``metric`` over one seed's photos (finite values only)."""
    values = [r[metric] for r in rows.values() if r[metric] is not None and math.isfinite(r[metric])]
    return float(np.mean(values)) if values else None


def paired_interval(model: dict[int, dict], reference: dict[int, dict], metric: str, n: int = 10000, seed: int = 0,
                    level: float = 0.95) -> dict[str, Any] | None:
    """``model - reference`` of ``metric`` on the same photos and seeds, with an interval
    that carries seed and photo variance.

    Two-level percentile bootstrap: each resample draws seeds with replacement, then, within
    each drawn seed, photos with replacement, and averages the per-photo differences. The
    reported interval is the union of that and the seed-level paired Student-t interval (the
    per-seed mean differences), so it is never narrower than the seeds alone allow. With one
    seed there is no t-interval: the bootstrap over photos stands alone.
    """
    per_seed = photo_differences(model, reference, metric)
    if not per_seed:
        return None
    seeds = list(per_seed)
    diffs = [np.asarray(list(d.values()), dtype=np.float64) for d in per_seed.values()]
    rng = np.random.default_rng(seed)
    boot = np.empty(n)
    for i in range(n):
        picked = rng.integers(0, len(diffs), len(diffs))
        boot[i] = np.mean([diffs[j][rng.integers(0, len(diffs[j]), len(diffs[j]))].mean() for j in picked])
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    seed_means = [float(d.mean()) for d in diffs]
    out = {"mean": float(np.mean(seed_means)), "lo": float(lo), "hi": float(hi), "seeds": len(diffs),
           "photos": int(np.mean([len(d) for d in diffs])), "per_seed": dict(zip(map(str, seeds), seed_means)),
           "bootstrap": [float(lo), float(hi)], "seed_t": None}
    t = confidence_interval(seed_means) if len(seed_means) >= 2 else None
    if t and t.get("ci95") is not None:
        t_lo, t_hi = t["mean"] - t["ci95"], t["mean"] + t["ci95"]
        out["seed_t"] = [t_lo, t_hi]
        out["lo"], out["hi"] = min(out["lo"], t_lo), max(out["hi"], t_hi)
    return out


#: Fewer seeds than this: the verdict says so (a t-interval over 2 seeds is very wide, and
#: a bootstrap over 2 seeds cannot see their spread).
MIN_SEEDS = 3


def verdict(name: str, reference: str, paired: dict[str, Any] | None) -> dict[str, Any]:
    """What ``paired`` (``name - reference``) says, in words: who is better and by how much,
    or "no detectable difference (interval spans 0)", and the smallest difference this run
    could have detected (the interval's half-width)."""
    if paired is None:
        return {"text": "not compared (no paired photos)", "detectable": None}
    mean, lo, hi = paired["mean"], paired["lo"], paired["hi"]
    interval = f"[{lo:+.3f}, {hi:+.3f}]"
    if lo > 0:
        text = f"{name} better by {mean:.3f} {interval}"
    elif hi < 0:
        text = f"{reference} better by {-mean:.3f} {interval}"
    else:
        text = f"no detectable difference (interval spans 0: {mean:+.3f} {interval})"
    if paired["seeds"] < MIN_SEEDS:
        text = f"too few seeds ({paired['seeds']} < {MIN_SEEDS}): {text}"
    return {"text": text, "detectable": (hi - lo) / 2}


def summarize(results: dict[str, dict[int, dict]], reference: str) -> dict[str, Any]:
    """Per model: metric means over seeds with CIs, paired differences against ``reference``."""
    out: dict[str, Any] = {}
    for name, seeds in results.items():
        entry: dict[str, Any] = {"uses_ground_truth_l": any(s["metrics"].get("uses_ground_truth_l") for s in seeds.values()),
                                 "seeds": sorted(seeds), "metrics": {}, "paired_vs_reference": {}}
        for metric in METRICS:
            values = [s["metrics"].get(metric) for s in seeds.values()]
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                entry["metrics"][metric] = confidence_interval([float(v) for v in values])
        for key in ("train_flops", "fit_seconds"):
            values = [float(s["train"][key]) for s in seeds.values() if s["train"].get(key) is not None]
            entry[key] = float(np.mean(values)) if values else None
        entry["steps"] = [s["train"]["steps"] for s in seeds.values()]
        entry["per_seed"] = {str(seed): {m: per_seed_mean(s["per_image"], m) for m in METRICS} for seed, s in seeds.items()}
        entry["paired"], entry["verdict"] = {}, {}
        if name != reference and reference in results:
            per_image = {seed: s["per_image"] for seed, s in seeds.items()}
            ref_images = {seed: s["per_image"] for seed, s in results[reference].items()}
            for metric in METRICS:
                diff = paired_differences(per_image, ref_images, metric)
                if diff is not None:
                    entry["paired_vs_reference"][metric] = diff
                entry["paired"][metric] = paired_interval(per_image, ref_images, metric)
                entry["verdict"][metric] = verdict(name, reference, entry["paired"][metric])
        out[name] = entry
    return out


def _fmt_ci(stats: dict[str, Any] | None) -> str:
    if not stats:
        return ""
    ci = stats.get("ci95")
    return f"{stats['mean']:.3f}" + (f" +- {ci:.3f}" if ci is not None else "")


def _exemplar_lines(args: argparse.Namespace) -> list[str]:
    """The setup's sentence on exemplars: the protocol every row was scored with."""
    protocol = next((o.split("=", 1)[1] for o in args.eval if o.lstrip("+").startswith("exemplar=")), "none")
    exemplar_models = [f"`{m}`" for m in args.models if m in ("joint_exemplar", "cascade_exemplar")]
    if protocol == "none" and not exemplar_models:
        return []
    guided = " (GT-colour guided: an upper bound, not a blind result)" if protocol == "warped_gt" else ""
    return ["", f"Exemplar protocol of every row: `{protocol}`{guided}; models without exemplar input ignore the exemplar"
                + (f"; {', '.join(exemplar_models)} run in automatic mode" if protocol == "none" and exemplar_models else "") + "."]


def _scale_lines(args: argparse.Namespace, summary: dict[str, Any]) -> list[str]:
    """The setup's sentence on magnification: what each row was trained for and tested at."""
    scale = getattr(args, "scale_used", None)
    if scale is None:
        return []
    low, high = ANY_SCALE_RANGE
    any_scale = [f"`{n}`" for n in summary if n in ANY_SCALE_CONTENDERS]
    text = f"Every model is tested at x{scale:.3g}; the fixed-scale ones were trained for x{scale:.3g}."
    if any_scale:
        where = "inside" if low <= scale <= high else "**outside** (extrapolation)"
        text += (f" {', '.join(any_scale)} trained once over x{low:g} to x{high:g} (one scale drawn per batch), on the same "
                 f"budget, checkpoint chosen at x{scale:.3g} like the others; x{scale:.3g} is {where} its range.")
    return ["", text]


def markdown(summary: dict[str, Any], baselines: dict[str, Any], reference: str, args: argparse.Namespace,
             budget: float, test_set: dict[str, Any]) -> str:
    verdicts = [f"- `{name}` vs `{reference}`, {metric} (dB): {e['verdict'][metric]['text']}; smallest detectable "
                f"difference {e['verdict'][metric]['detectable']:.3f} dB" for name, e in summary.items()
                for metric in ("psnr_joint", "psnr") if e["verdict"].get(metric) and e["verdict"][metric]["detectable"] is not None]
    floor = [f"- `{name}` (dB): {e['vs_bicubic']['text']}" for name, e in summary.items() if e.get("vs_bicubic")]
    lines = [
        "# Joint or cascade?", "",
        "## Verdict", "",
        f"Paired differences against `{reference}` on the same photos and seeds; intervals carry seed and photo "
        "variance (two-level bootstrap, widened to the seed-level t-interval).", "",
        *(verdicts or ["- (no contender besides the reference)"]), "",
        "Against the bicubic baseline (psnr_joint; a model not above it learned nothing detectable):", "",
        *(floor or ["- (no bicubic baseline)"]), "",
        "## Setup", "",
        f"Seeds {args.seeds}; training budget: the FLOPs of {args.budget_steps} steps of `{reference}` "
        f"({budget / 1e9:.3f} GFLOP per run); every model trains on the whole number of samples that spends it within "
        f"{BUDGET_TOLERANCE:.0%} (the last batch cut short; two-stage cascades: half per stage), so `x budget` is the "
        "compute each row really trained on. "
        + ("Widths are as configured: parameters and inference FLOPs differ, as the table shows."
           if args.match == "train_flops" else
           f"Each contender's `model.net.width_mult` was solved so that its {args.match.replace('_', ' ')} matches "
           f"`{reference}`'s within {MATCH_TOLERANCE:.0%} (column `width`)."),
        *_scale_lines(args, summary), *_exemplar_lines(args),
        "", f"Train overrides `{' '.join(args.train) or '(none)'}`; eval overrides `{' '.join(args.eval) or '(none)'}`.", "",
        f"Test set: {test_set['name']} ({test_set['photos']} photos); "
        + ("checked disjoint from every photo the trainings read (training and validation sides)."
           if test_set["disjoint_from_training_and_validation"] else
           f"**not held out**: it shares {', '.join(test_set['overlap'])} with what the trainings read."),
        "", "Mean +- 95 % CI (Student t) over seeds. PSNR (GT L*) is protocol 1, PSNR (own L*) protocol 2 (the joint task).", "",
        "| model | width | params (M) | inference GFLOP/image | samples | train GFLOP | x budget | fit s | PSNR (GT L*) | "
        "PSNR (own L*) | SSIM (own L*) | Y-PSNR |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    for name, e in summary.items():
        label = f"{name} ({GUIDED_MARK})" if e["uses_ground_truth_l"] else name
        m = e["metrics"]
        width = f"{e['width_mult']:g}" if e.get("width_mult") else "as set"
        lines.append(f"| {label} | {width} | {e['params'] / 1e6:.3f} | {e['inference_flops'] / 1e9:.3f} | "
                     f"{' + '.join(map(str, e['samples'].values()))} | {e['train_flops'] / 1e9:.3f} | {e['train_flops'] / budget:.3f} | "
                     f"{e['fit_seconds'] or 0:.0f} | {_fmt_ci(m.get('psnr'))} | {_fmt_ci(m.get('psnr_joint'))} | "
                     f"{_fmt_ci(m.get('ssim_joint'))} | {_fmt_ci(m.get('psnr_y'))} |")
    for name, b in baselines.items():
        m = b["metrics"]
        cells = " | ".join(f"{m[k]:.3f}" if isinstance(m.get(k), (int, float)) else "-" for k in ("psnr", "psnr_joint", "ssim_joint", "psnr_y"))
        lines.append(f"| baseline {name} (no training) | - | 0 | - | - | 0 | 0 | - | {cells} |")
    lines += ["", f"## Paired difference against `{reference}` (mean [interval]; seeds x photos)", "",
              "| model | metric | seeds | photos | mean | interval | seed-level t | bootstrap |",
              "| --- | --- | ---: | ---: | ---: | --- | --- | --- |"]
    for name, e in summary.items():
        for metric, d in e["paired"].items():
            if d is None:
                continue
            t = f"[{d['seed_t'][0]:+.3f}, {d['seed_t'][1]:+.3f}]" if d["seed_t"] else "(1 seed)"
            lines.append(f"| {name} | {metric} | {d['seeds']} | {d['photos']} | {d['mean']:+.3f} | [{d['lo']:+.3f}, {d['hi']:+.3f}] | "
                         f"{t} | [{d['bootstrap'][0]:+.3f}, {d['bootstrap'][1]:+.3f}] |")
    supers = [(n, m, d["by_supercategory"]) for n, e in summary.items() for m, d in e["paired_vs_reference"].items()
              if "by_supercategory" in d and m == "psnr_joint"]
    if supers:
        lines += ["", "## psnr_joint difference per COCO supercategory (seed-averaged, bootstrap over photos)", "",
                  "| model | supercategory | photos | mean | 95 % CI |", "| --- | --- | ---: | ---: | --- |"]
        for name, _, groups in supers:
            for group, d in groups.items():
                lines.append(f"| {name} | {group} | {d['n']} | {d['mean']:+.3f} | [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] |")
    if any(e["uses_ground_truth_l"] for e in summary.values()):
        lines += ["", f"{GUIDED_MARK}: fed the ground-truth L*; not comparable with the blind models."]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], baselines: dict[str, Any], budget: float, path: Path, metric: str = "psnr_joint") -> Path:
    """Bars of ``metric`` (mean +- 95 % CI over seeds), each labelled with the compute it
    trained on (x budget), the baselines as lines; the y-axis range is stated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, e in summary.items() if metric in e["metrics"]]
    means = [summary[n]["metrics"][metric]["mean"] for n in names]
    errs = [summary[n]["metrics"][metric]["ci95"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(7.2, 4.0), dpi=120)
    bars = ax.bar(range(len(names)), means, yerr=errs, capsize=4, color="#4477aa")
    for bar, name in zip(bars, names):
        ax.annotate(f"x{summary[name]['train_flops'] / budget:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=7)
    levels = list(means)
    for (name, b), style in zip(baselines.items(), ("--", ":")):
        value = b["metrics"].get(metric)
        if value is not None:
            ax.axhline(value, color="#aa3377", linestyle=style, label=f"baseline {name}: {value:.2f} dB")
            levels.append(value)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_xlabel("model (bar label: training FLOPs / budget)")
    ax.set_ylabel(f"{metric} (dB), mean +- 95 % CI")
    if levels:
        low, high = min(levels) - 1.0, max(levels) + 1.0
        ax.set_ylim(low, high)
        ax.set_title(f"y-axis cut: starts at {low:.1f} dB, not 0", fontsize=8)
    if baselines:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_paired(report: dict[str, Any], path: Path, metrics: tuple[str, ...] = ("psnr_joint", "psnr")) -> Path:
    """The verdict as a picture: per contender and metric, its paired difference against the
    reference (``report["contenders"][name]["paired"]``, as in ``comparison.json``): the mean,
    the interval that carries seed and photo variance, each seed's mean as a dot, and zero as
    a line; the label says the verdict's words (an interval across zero: no detectable difference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, metric, entry["paired"][metric]) for name, entry in report["contenders"].items()
            for metric in metrics if (entry.get("paired") or {}).get(metric)]
    fig, ax = plt.subplots(figsize=(7.2, 1.2 + 0.45 * max(len(rows), 1)), dpi=120)
    for y, (name, metric, d) in enumerate(reversed(rows)):
        spans = d["lo"] <= 0 <= d["hi"]
        colour = "#777777" if spans else ("#228833" if d["lo"] > 0 else "#cc3311")
        ax.plot([d["lo"], d["hi"]], [y, y], color=colour, linewidth=2.5, solid_capstyle="butt")
        ax.plot([d["mean"]], [y], "o", color=colour, markersize=6)
        seeds = [v for v in d.get("per_seed", {}).values() if v is not None]
        ax.plot(seeds, [y] * len(seeds), "|", color="black", markersize=9, alpha=0.6)
        words = "no detectable difference" if spans else ("better" if d["lo"] > 0 else "worse")
        if d["seeds"] < MIN_SEEDS:
            words = f"too few seeds: {words}"
        ax.annotate(f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {words}", (d["hi"], y), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=7,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [f"{n} ({m})" for n, m, _ in reversed(rows)], fontsize=8)
    ax.set_xlabel(f"difference to {report['reference']} (dB)")
    if rows:  # room for the labels right of the widest interval
        low, high = min(d["lo"] for *_, d in rows), max(d["hi"] for *_, d in rows)
        width = max(high - low, 1e-3)
        ax.set_xlim(min(low, 0.0) - 0.1 * width, max(high, 0.0) + 1.2 * width)
    seeds = len(report["seeds"])
    ax.set_title(f"paired against {report['reference']} on the same photos, {seeds} seed{'s' * (seeds != 1)}\n"
                 "mean (dot), interval over seeds x photos (bar), each seed's mean (|)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def code_digest() -> str:
    """sha256 over the package's sources and configs: a finished run is reused only under the same code."""
    import hashlib

    digest = hashlib.sha256()
    for top, pattern in ((Path(__file__).resolve().parent, "*.py"), (Path(CONFIG_DIR), "*.yaml")):
        for path in sorted(top.rglob(pattern)):
            digest.update(path.relative_to(top).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


RUN_RECORD = "compare_run.json"


def _finished(run_dir: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """The saved training record of ``run_dir`` when it was made under ``record`` (same
    contender, seed, overrides, budget and code) and its evaluation is there; else ``None``."""
    try:
        saved = json.loads((run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("record") != record or not (run_dir / "eval" / "per_image.csv").is_file():
        return None
    return saved["trained"]


def _evaluate_baselines(out: Path, eval_overrides: list[str], code: str) -> dict[str, Any]:
    """``eval baseline=gray`` and ``baseline=bicubic`` on the test set (no training, no seeds)."""
    baselines = {}
    for name in ("gray", "bicubic"):
        run_dir = out / "baselines" / name
        record = {"baseline": name, "eval": eval_overrides, "code": code}
        if _finished(run_dir, record) is None:
            _run("joint_colsr.eval", [f"baseline={name}", *eval_overrides, f"hydra.run.dir={run_dir / 'eval'}"],
                 run_dir.parent / f"{name}.log")
            (run_dir / RUN_RECORD).write_text(json.dumps({"record": record, "trained": {}}) + "\n")
        baselines[name] = {"metrics": json.loads((run_dir / "eval" / "metrics.json").read_text()),
                           "per_image": read_per_image(run_dir / "eval" / "per_image.csv")}
    return baselines


def resolve_jobs(jobs: str | int) -> int:
    """``--jobs``: a count, or ``auto`` = one training per visible CUDA device (1 without one)."""
    if str(jobs) == "auto":
        import torch

        return max(1, torch.cuda.device_count())
    count = int(jobs)
    if count < 1:
        raise SystemExit(f"--jobs must be a positive count or auto, got {jobs}")
    return count


def _train_and_evaluate_one(number: int, total: int, name: str, seed: int, run_dir: Path, record: dict[str, Any],
                            entry: dict[str, Any], eval_overrides: list[str], env: dict[str, str] | None = None) -> None:
    """Train contender ``name`` at ``seed`` on its planned samples (``entry``: :func:`plan_budget`'s),
    evaluate it, and write its ``compare_run.json`` last (what marks the run finished)."""
    where = f" on CUDA device {env['CUDA_VISIBLE_DEVICES']}" if env and "CUDA_VISIBLE_DEVICES" in env else ""
    log.info("compare: run %d of %d: training %s seed %d%s (its output: %s.log)", number, total, name, seed, where, run_dir)
    trained = train_contender(name, seed, run_dir, entry["train"], entry, env=env)
    _run("joint_colsr.eval", [f"ckpt_path={trained['ckpt']}", *eval_overrides, f"hydra.run.dir={run_dir / 'eval'}"],
         run_dir.parent / f"{run_dir.name}.log", env=env)
    (run_dir / RUN_RECORD).write_text(json.dumps({"record": record, "trained": trained}) + "\n")
    log.info("compare: run %d of %d: %s seed %d done", number, total, name, seed)


def run_planned(plan_file: Path, number: int) -> None:
    """Run number ``number`` of a plan written by :func:`_launch` (``compare_run``'s task)."""
    plan = json.loads(plan_file.read_text())
    run = plan["runs"].get(str(number))
    if run is None:
        raise ValueError(f"run={number}: {plan_file} plans runs {', '.join(plan['runs'])}")
    _train_and_evaluate_one(number, plan["total"], run["name"], run["seed"], Path(run["run_dir"]), run["record"],
                            run["entry"], plan["eval"])


def _launch(pending: list[tuple], total: int, plan: dict[str, Any], eval_overrides: list[str], launcher: str,
            launcher_args: list[str], out: Path) -> None:
    """Every pending run as one Hydra sweep of ``compare_run`` jobs through ``hydra/launcher=launcher``
    (on SLURM: one array job, a task per run); returns when the sweep has ended."""
    import time

    from joint_colsr import compare_run
    from joint_colsr.run.in_process import CommandFailed, run_command

    if not pending:
        return
    train = _compose_train(list(plan["contenders"][pending[0][1]]["train"]))
    devices = str(train.trainer.devices)
    if devices != "1" or int(train.trainer.get("num_nodes") or 1) != 1:
        raise SystemExit(f"compare --launcher {launcher}: each run is one job on one device; the training config has "
                         f"trainer.devices={devices}, trainer.num_nodes={train.trainer.get('num_nodes')} (set them to 1)")
    sweep = out / "sweeps" / time.strftime("%Y-%m-%d_%H-%M-%S")
    sweep.mkdir(parents=True, exist_ok=True)
    plan_file = sweep / "plan.json"
    plan_file.write_text(json.dumps({"total": total, "eval": eval_overrides, "runs": {
        str(number): {"name": name, "seed": seed, "run_dir": str(run_dir), "record": record, "entry": plan["contenders"][name]}
        for number, name, seed, run_dir, record in pending}}, indent=2) + "\n")
    args = ["-m", f"plan={plan_file}", "run=" + ",".join(str(item[0]) for item in pending), f"hydra/launcher={launcher}",
            f"hydra.sweep.dir={sweep}", f"trainer.accelerator={train.trainer.accelerator}",
            f"data.num_workers={train.data.get('num_workers') or 0}", *launcher_args]
    log.info("compare: %d runs as one sweep (hydra/launcher=%s): %s", len(pending), launcher, sweep)
    try:
        run_command(compare_run.main, args)
    except CommandFailed:
        pass  # the failed jobs are named below, from what each left


def _train_and_evaluate(pending: list[tuple], total: int, plan: dict[str, Any], eval_overrides: list[str], jobs: int,
                        launcher: str | None = None, launcher_args: list[str] | None = None, out: Path | None = None) -> None:
    """Train and evaluate each pending ``(number, name, seed, run_dir, record)``: with
    ``launcher``, as one Hydra sweep (:func:`_launch`); else ``jobs`` at a time, one at a time
    in this process (no interpreter start-up per run), more as subprocesses, job slot ``k``
    on CUDA device ``k`` (``CUDA_VISIBLE_DEVICES``) where there are devices. Each run's
    ``compare_run.json`` is written only once its evaluation is there. Every run is tried;
    the failed ones are named together at the end."""
    import contextlib
    import queue
    from concurrent.futures import ThreadPoolExecutor

    failures = []
    if launcher is not None:
        _launch(pending, total, plan, eval_overrides, launcher, list(launcher_args or []), out)
        failures = [f"{name} seed {seed}: no {RUN_RECORD} (its job's log and error: {out / 'sweeps'})"
                    for _, name, seed, run_dir, _ in pending if not (run_dir / RUN_RECORD).is_file()]
    else:
        slots: queue.Queue[int] = queue.Queue()
        for slot in range(jobs):
            slots.put(slot)

        def one(item: tuple) -> None:
            number, name, seed, run_dir, record = item
            slot = slots.get()
            try:
                env = job_env(slot, jobs) if jobs > 1 else None  # one job at a time: in this process, as the user set it
                _train_and_evaluate_one(number, total, name, seed, run_dir, record, plan["contenders"][name], eval_overrides, env)
            finally:
                slots.put(slot)

        # One job at a time runs in the main thread: Hydra commands run in this process need it.
        with ThreadPoolExecutor(max_workers=jobs) if jobs > 1 else contextlib.nullcontext() as pool:
            outcomes = [(item, pool.submit(one, item).result if pool else functools.partial(one, item)) for item in pending]
            for item, outcome in outcomes:
                try:
                    outcome()
                except Exception as err:  # noqa: BLE001 - every run is tried; all failures are reported together
                    failures.append(f"{item[1]} seed {item[2]}: {err}")
    if failures:
        raise RuntimeError(f"compare: {len(failures)} of {len(pending)} runs failed (the others are kept and reused "
                           "by the next compare):\n" + "\n".join(failures))


def job_env(slot: int, jobs: int) -> dict[str, str]:
    """The variables of parallel job slot ``slot`` of ``jobs``: its CUDA device where there are
    devices, and its share of the CPU cores as ``OMP_NUM_THREADS`` (unless the user set it):
    each of N subprocesses would otherwise start a thread per core and oversubscribe the CPU
    (on the 2-core VM, two tiny ``ic_only`` trainings at once each ran for minutes)."""
    env = {}
    gpu = _device_of(slot)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        env["OMP_NUM_THREADS"] = str(max(1, cores // jobs))
    return env


def _device_of(slot: int) -> str | None:
    """The CUDA device of job slot ``slot``: the slot-th of the visible ones, or ``None`` without CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d for d in visible.split(",") if d.strip()]
        return devices[slot % len(devices)] if devices else None
    import torch

    count = torch.cuda.device_count()
    return str(slot % count) if count else None


def apply_scale(args: argparse.Namespace) -> None:
    """``--scale S`` (or any-scale contenders at the default scale): train the fixed-scale
    contenders for ``S`` and evaluate everyone at ``S`` (``eval scales=[S]``), in place."""
    if args.scale is None and not set(args.models) & set(ANY_SCALE_CONTENDERS):
        return
    from joint_colsr.data.scales import check_scales, target_side

    data = _compose_train([*CONTENDERS[args.reference][1], *args.train]).data
    r = int(data.input_size)
    if args.scale is None:  # the suite's default scale (data.output_size / data.input_size)
        scale = int(data.output_size) / r
    else:
        try:
            (scale,) = check_scales([args.scale], "--scale", r, 2**31)
        except ValueError as err:
            raise SystemExit(str(err)) from None
        args.train = [*args.train, f"data.output_size={target_side(r, scale)}"]
    args.eval = [*args.eval, f"scales=[{scale:.6g}]"]
    args.scale_used = scale


def compare(args: argparse.Namespace) -> dict[str, Any]:
    if args.models is None:
        args.models = default_models(args.scale)
    apply_scale(args)
    unknown = [m for m in args.models if m not in CONTENDERS]
    if unknown or args.reference not in args.models:
        raise SystemExit(f"--models must be among {list(CONTENDERS)} and include --reference ({args.reference}); got {args.models}")
    out = Path(args.out).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    kind, spec = CONTENDERS[args.reference]
    code = code_digest()
    args.train, args.eval = default_test_set([*spec], list(args.train), list(args.eval), list(args.test_photos))
    plan = plan_budget(list(args.models), args.reference, list(args.train), args.budget_steps, args.match)
    budget = plan["budget_flops"]
    for name, entry in plan["contenders"].items():
        log.info("compare: %s trains on %s samples (%.3g GFLOP, x%.3f budget)%s", name,
                 " + ".join(str(c["samples"]) for c in entry["stages"].values()), entry["train_flops"] / 1e9,
                 entry["train_flops"] / budget, f" at model.net.width_mult={entry['width_mult']:g}" if entry["width_mult"] else "")
    test_set = check_test_set(list(args.train), list(args.eval))
    if not test_set["disjoint_from_training_and_validation"]:
        log.warning("compare: the test set overlaps what training reads (%s): the comparison is not on held-out photos",
                    ", ".join(test_set["overlap"]))
    runs = [(name, seed) for name in args.models for seed in args.seeds]
    results: dict[str, dict[int, dict]] = {}
    pending = []
    for number, (name, seed) in enumerate(runs, start=1):
        run_dir = out / name / f"seed{seed}"
        entry = plan["contenders"][name]
        record = {"contender": name, "seed": seed, "train": entry["train"], "eval": list(args.eval), "budget_flops": budget,
                  "samples": [c["samples"] for c in entry["stages"].values()], "code": code}
        if _finished(run_dir, record) is not None:
            log.info("compare: run %d of %d: %s seed %d finished before under the same config and code: reused",
                     number, len(runs), name, seed)
        else:
            pending.append((number, name, seed, run_dir, record))
    reused = len(runs) - len(pending)
    _train_and_evaluate(pending, len(runs), plan, list(args.eval), resolve_jobs(args.jobs), args.launcher,
                        list(args.launcher_args), out)
    for name, seed in runs:
        run_dir = out / name / f"seed{seed}"
        results.setdefault(name, {})[seed] = {
            "train": json.loads((run_dir / RUN_RECORD).read_text())["trained"],
            "metrics": json.loads((run_dir / "eval" / "metrics.json").read_text()),
            "per_image": read_per_image(run_dir / "eval" / "per_image.csv"),
        }
    baselines = _evaluate_baselines(out, list(args.eval), code)
    summary = summarize(results, args.reference)
    for name, entry in plan["contenders"].items():
        summary[name].update({"budget_flops": budget, "width_mult": entry["width_mult"], "params": entry["params"],
                              "inference_flops": entry["inference_flops"],
                              "samples": {stage: c["samples"] for stage, c in entry["stages"].items()}})
    for name, seeds in results.items():  # is it above the bicubic floor at all?
        bicubic = {seed: baselines["bicubic"]["per_image"] for seed in seeds}
        floor = paired_interval({seed: s["per_image"] for seed, s in seeds.items()}, bicubic, "psnr_joint")
        summary[name]["vs_bicubic"] = {**verdict(name, "bicubic", floor), "paired": floor}
    report = {"reference": args.reference, "seeds": list(args.seeds), "budget_flops": budget, "budget_steps": args.budget_steps,
              "scale": getattr(args, "scale_used", None), "any_scale_range": list(ANY_SCALE_RANGE),
              "match": args.match, "budget_tolerance": BUDGET_TOLERANCE,
              "train_overrides": list(args.train), "eval_overrides": list(args.eval), "reused_runs": reused, "test_set": test_set,
              "contenders": summary,
              "baselines": {name: {"metrics": {m: b["metrics"].get(m) for m in METRICS}} for name, b in baselines.items()}}
    (out / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "comparison.md").write_text(markdown(summary, baselines, args.reference, args, budget, test_set))
    plot(summary, baselines, budget, out / "comparison.png")
    plot_paired(report, out / "paired.png")
    print(f"comparison of {len(args.models)} models x {len(args.seeds)} seeds ({reused} of {len(runs)} runs reused): "
          f"{out / 'comparison.md'}")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"contenders among {list(CONTENDERS)} (default: all but srgan and the any-scale ones; "
                             "with --scale the any-scale ones too)")
    parser.add_argument("--scale", type=float, default=None,
                        help="train the fixed-scale contenders for this magnification and evaluate everyone at it; "
                             f"the any-scale contenders train once over {list(ANY_SCALE_RANGE)} (default: the data's "
                             "output_size / input_size, 256 / 96)")
    parser.add_argument("--reference", default="joint_paper", help="the joint net every model is paired against")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget-steps", type=int, default=60, help="training steps of the reference model that set the FLOP budget")
    parser.add_argument("--match", choices=MATCHES, default="train_flops",
                        help="fairness besides equal training FLOPs (always): inference_flops or params also solve each "
                             "contender's model.net.width_mult to match the reference's within 5%% (default: train_flops alone)")
    parser.add_argument("--train", nargs="*", default=[], help="Hydra overrides for every training run (data, trainer, debug)")
    parser.add_argument("--eval", nargs="*", default=[], help="Hydra overrides of eval: the test set (e.g. data=folder data.root=DIR)")
    parser.add_argument("--test-photos", nargs="+", default=list(SAMPLES_TEST_PHOTOS),
                        help="on the embedded photos (unless --eval picks data=...): held out of every training run and tested on")
    parser.add_argument("--jobs", default="auto",
                        help="trainings at once: a count, or auto = one per visible CUDA device (1 on a CPU machine); "
                             "with CUDA each runs on its own device")
    parser.add_argument("--launcher", default=None,
                        help="a Hydra launcher (hydra/launcher=NAME, e.g. slurm): every pending run goes to it as one sweep "
                             "of compare_run jobs, one device each (default: this machine, --jobs at a time)")
    parser.add_argument("--launcher-args", nargs="*", default=[],
                        help="overrides of that sweep, e.g. hydra.launcher.partition=gpu hydra.launcher.timeout_min=120")
    parser.add_argument("--out", default="outputs/compare", help="output folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``joint-colsr-compare``): returns nothing, so the exit status is 0 on success."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    compare(parse_args(argv))


if __name__ == "__main__":
    main()
