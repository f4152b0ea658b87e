"""Joint or cascade? One command: ``python -m joint_colsr.compare [options]`` (``make compare``).

Trains every contender at **equal training compute**, over several seeds, evaluates each on
one test set, and writes ``comparison.md``, ``comparison.json`` and ``comparison.png`` into
``--out``:

* contenders (``--models``): ``joint_paper`` (the paper's joint net), ``residual_joint``
  (Section IV's net, predicting its own L*), ``cascade_end_to_end`` (``model=cascade``:
  colorizer + upscaler trained together), ``two_stage_colorize_first`` and
  ``two_stage_upscale_first`` (``python -m joint_colsr.two_stage``: the paper's cascade, two
  networks trained separately) and ``ic_only`` (IC-only + bicubic L*);
* budget: the training FLOPs of ``--budget-steps`` steps of the reference model
  (``--reference``, the joint net), counted with ``torch.utils.flop_counter`` on one
  forward + backward pass; every run trains for as many steps as that budget buys it
  (``trainer.max_steps``), a two-stage cascade half of it per stage. Wall time
  (``fit_seconds``) is recorded too;
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
* a model fed the ground-truth L* would be marked "GT-L* guided" (none of the contenders is).

Every stage is the suite's own command (``train``, ``two_stage``, ``eval``), run as a
subprocess with ``--train`` overrides (data, trainer, debug) and ``--eval`` overrides (the
test set). The tiny form (seconds per run)::

    python -m joint_colsr.compare --seeds 0 1 --budget-steps 2 --train debug=tiny --eval data.val_views=1
"""

from __future__ import annotations

import argparse
import csv
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
}
#: Metrics compared (per image in ``per_image.csv``).
METRICS = ("psnr", "psnr_joint", "ssim", "ssim_joint", "psnr_y")


def _compose(config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir  # here, not above: `--help` needs neither Hydra nor torch
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def _compose_train(overrides: list[str]):
    return _compose("train", overrides)


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


def check_test_set(train: list[str], eval_overrides: list[str]) -> dict[str, Any]:
    """The test set and the result of checking it against what training reads: the groups
    (scenes; for files, the files) of the eval source's test side against both sides of
    the training source (training and validation)."""
    from hydra.utils import instantiate

    train_source = instantiate(_compose_train(train).data.source)
    eval_data = _compose("eval", eval_overrides).data
    test_source = instantiate(eval_data.source)
    seen = {item.group for side in train_source.split() for item in side}
    tested = {item.group for item in test_source.validation_items()}
    overlap = sorted(seen & tested)
    return {"name": f"{test_source.name}: {', '.join(sorted(tested))}" if len(tested) <= 12 else test_source.name,
            "photos": len(test_source.validation_items()), "disjoint_from_training_and_validation": not overlap,
            "overlap": overlap[:20]}


def training_flops_per_sample(overrides: list[str]) -> int:
    """FLOPs of one training forward + backward pass of one sample of the configured model
    (a multiply-add counts 2; on the meta device: nothing is computed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from joint_colsr.assembly import build_system

    cfg = _compose_train(overrides)
    net = build_system(cfg).net.to("meta").train()
    r, s = int(cfg.data.input_size), int(cfg.data.output_size)
    kwargs = {"l_highres": torch.zeros(1, 1, s, s, device="meta")} if getattr(net, "needs_l_highres", False) else {}
    with FlopCounterMode(display=False) as counter:
        out = net(torch.zeros(1, 1, r, r, device="meta"), **kwargs)
        outputs = [out] if isinstance(out, torch.Tensor) else [v for v in out.values() if v.requires_grad]
        if outputs:
            sum(v.float().pow(2).mean() for v in outputs).backward()
    return int(counter.get_total_flops())


def _run(module: str, args: list[str]) -> None:
    cmd = [sys.executable, "-m", module, *args]
    log.info("compare: %s", " ".join(cmd))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(CONFIG_DIR).parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compare: {' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")


def _steps(budget: float, flops_per_sample: int, batch_size: int) -> int:
    return max(1, int(round(budget / (flops_per_sample * batch_size))))


def train_contender(name: str, seed: int, run_dir: Path, train: list[str], budget: float, batch_size: int) -> dict[str, Any]:
    """Train one contender at the budget; ``{"ckpt", "steps", "train_flops", "fit_seconds"}``."""
    kind, spec = CONTENDERS[name]
    budget_args = ["trainer.max_epochs=-1"]  # trainer.max_steps ends the run
    if kind == "train":
        overrides = [*spec, *train]
        steps = _steps(budget, training_flops_per_sample(overrides), batch_size)
        _run("joint_colsr.train", [*overrides, f"seed={seed}", *budget_args, f"++trainer.max_steps={steps}",
                                   f"hydra.run.dir={run_dir}"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        return {"ckpt": str(run_dir / "checkpoints" / "last.ckpt"), "steps": steps,
                "train_flops": float(steps * batch_size * training_flops_per_sample(overrides)),
                "fit_seconds": metrics.get("fit_seconds")}
    # two-stage: half the budget per stage; the colorizer at the scale it runs at (two_stage does the same)
    from joint_colsr.two_stage import colorizer_stage_overrides

    data = _compose_train(["model=ic_only", *train]).data
    c_over = ["model=ic_only", *train, *colorizer_stage_overrides(spec, int(data.input_size), int(data.output_size))]
    u_over = ["model=sr_only", *train]
    c_steps = _steps(budget / 2, training_flops_per_sample(c_over), batch_size)
    u_steps = _steps(budget / 2, training_flops_per_sample(u_over), batch_size)
    quoted = lambda items: "[" + ",".join(json.dumps(i) for i in items) + "]"  # noqa: E731
    _run("joint_colsr.two_stage", [f"order={spec}", f"seed={seed}", f"overrides={quoted([*train, *budget_args])}",
                                   f"colorizer_overrides={quoted([f'++trainer.max_steps={c_steps}'])}",
                                   f"upscaler_overrides={quoted([f'++trainer.max_steps={u_steps}'])}",
                                   f"hydra.run.dir={run_dir}"])
    record = json.loads((run_dir / "two_stage.json").read_text())
    stages = record["stage_metrics"]
    flops = (c_steps * training_flops_per_sample(c_over) + u_steps * training_flops_per_sample(u_over)) * batch_size
    return {"ckpt": record["cascade"], "steps": [c_steps, u_steps], "train_flops": float(flops),
            "fit_seconds": sum(float(stages[s].get("fit_seconds") or 0) for s in ("colorizer", "upscaler"))}


def _read_per_image(path: Path) -> dict[str, dict[str, Any]]:
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
        f"({budget / 1e9:.2f} GFLOP per run); every model trains for the whole steps that budget buys it, at least one "
        "(two-stage cascades: half per stage), so the column `x budget` is the compute each row really trained on; "
        f"train overrides `{' '.join(args.train) or '(none)'}`; eval overrides `{' '.join(args.eval) or '(none)'}`.", "",
        f"Test set: {test_set['name']} ({test_set['photos']} photos); "
        + ("checked disjoint from every photo the trainings read (training and validation sides)."
           if test_set["disjoint_from_training_and_validation"] else
           f"**not held out**: it shares {', '.join(test_set['overlap'])} with what the trainings read."),
        "", "Mean +- 95 % CI (Student t) over seeds. PSNR (GT L*) is protocol 1, PSNR (own L*) protocol 2 (the joint task).", "",
        "| model | steps | train GFLOP | x budget | fit s | PSNR (GT L*) | PSNR (own L*) | SSIM (own L*) | Y-PSNR |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    for name, e in summary.items():
        label = f"{name} ({GUIDED_MARK})" if e["uses_ground_truth_l"] else name
        m = e["metrics"]
        lines.append(f"| {label} | {e['steps'][0]} | {e['train_flops'] / 1e9:.2f} | {e['train_flops'] / budget:.2f} | "
                     f"{e['fit_seconds'] or 0:.0f} | {_fmt_ci(m.get('psnr'))} | {_fmt_ci(m.get('psnr_joint'))} | "
                     f"{_fmt_ci(m.get('ssim_joint'))} | {_fmt_ci(m.get('psnr_y'))} |")
    for name, b in baselines.items():
        m = b["metrics"]
        cells = " | ".join(f"{m[k]:.3f}" if isinstance(m.get(k), (int, float)) else "-" for k in ("psnr", "psnr_joint", "ssim_joint", "psnr_y"))
        lines.append(f"| baseline {name} (no training) | - | 0 | 0 | - | {cells} |")
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
        ax.annotate(f"x{summary[name]['train_flops'] / budget:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
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
            _run("joint_colsr.eval", [f"baseline={name}", *eval_overrides, f"hydra.run.dir={run_dir / 'eval'}"])
            (run_dir / RUN_RECORD).write_text(json.dumps({"record": record, "trained": {}}) + "\n")
        baselines[name] = {"metrics": json.loads((run_dir / "eval" / "metrics.json").read_text()),
                           "per_image": _read_per_image(run_dir / "eval" / "per_image.csv")}
    return baselines


def compare(args: argparse.Namespace) -> dict[str, Any]:
    unknown = [m for m in args.models if m not in CONTENDERS]
    if unknown or args.reference not in args.models:
        raise SystemExit(f"--models must be among {list(CONTENDERS)} and include --reference ({args.reference}); got {args.models}")
    out = Path(args.out).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    kind, spec = CONTENDERS[args.reference]
    ref_overrides = [*spec, *args.train]
    batch_size = int(_compose_train(ref_overrides).data.batch_size)
    budget = float(args.budget_steps * batch_size * training_flops_per_sample(ref_overrides))
    code = code_digest()
    picks_data = any(o.lstrip("+~").startswith(("data=", "data.source", "data.root")) for o in args.eval)
    if not picks_data and "SamplePhotos" in str(_compose_train(ref_overrides).data.source.get("_target_", "")):
        args.train, held_out = held_out_split(list(args.train), list(args.test_photos))
        args.eval = [*held_out, *args.eval]
        ref_overrides = [*spec, *args.train]
        log.info("compare: test set: the embedded photos %s, held out of every training run", args.test_photos)
    test_set = check_test_set(list(args.train), list(args.eval))
    if not test_set["disjoint_from_training_and_validation"]:
        log.warning("compare: the test set overlaps what training reads (%s): the comparison is not on held-out photos",
                    ", ".join(test_set["overlap"]))
    runs = [(name, seed) for name in args.models for seed in args.seeds]
    results: dict[str, dict[int, dict]] = {}
    reused = 0
    for number, (name, seed) in enumerate(runs, start=1):
        run_dir = out / name / f"seed{seed}"
        record = {"contender": name, "seed": seed, "train": list(args.train), "eval": list(args.eval), "budget_flops": budget,
                  "code": code}
        trained = _finished(run_dir, record)
        if trained is not None:
            reused += 1
            log.info("compare: run %d of %d: %s seed %d finished before under the same config and code: reused",
                     number, len(runs), name, seed)
        else:
            log.info("compare: run %d of %d: training %s seed %d", number, len(runs), name, seed)
            trained = train_contender(name, seed, run_dir, list(args.train), budget, batch_size)
            _run("joint_colsr.eval", [f"ckpt_path={trained['ckpt']}", *args.eval, f"hydra.run.dir={run_dir / 'eval'}"])
            (run_dir / RUN_RECORD).write_text(json.dumps({"record": record, "trained": trained}) + "\n")
        results.setdefault(name, {})[seed] = {
            "train": trained,
            "metrics": json.loads((run_dir / "eval" / "metrics.json").read_text()),
            "per_image": _read_per_image(run_dir / "eval" / "per_image.csv"),
        }
    baselines = _evaluate_baselines(out, list(args.eval), code)
    summary = summarize(results, args.reference)
    for name, seeds in results.items():  # is it above the bicubic floor at all?
        bicubic = {seed: baselines["bicubic"]["per_image"] for seed in seeds}
        floor = paired_interval({seed: s["per_image"] for seed, s in seeds.items()}, bicubic, "psnr_joint")
        summary[name]["vs_bicubic"] = {**verdict(name, "bicubic", floor), "paired": floor}
    report = {"reference": args.reference, "seeds": list(args.seeds), "budget_flops": budget, "budget_steps": args.budget_steps,
              "train_overrides": list(args.train), "eval_overrides": list(args.eval), "reused_runs": reused, "test_set": test_set,
              "contenders": summary,
              "baselines": {name: {"metrics": {m: b["metrics"].get(m) for m in METRICS}} for name, b in baselines.items()}}
    (out / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "comparison.md").write_text(markdown(summary, baselines, args.reference, args, budget, test_set))
    plot(summary, baselines, budget, out / "comparison.png")
    print(f"comparison of {len(args.models)} models x {len(args.seeds)} seeds ({reused} of {len(runs)} runs reused): "
          f"{out / 'comparison.md'}")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CONTENDERS), help=f"contenders (default: all of {list(CONTENDERS)})")
    parser.add_argument("--reference", default="joint_paper", help="the joint net every model is paired against")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget-steps", type=int, default=60, help="training steps of the reference model that set the FLOP budget")
    parser.add_argument("--train", nargs="*", default=[], help="Hydra overrides for every training run (data, trainer, debug)")
    parser.add_argument("--eval", nargs="*", default=[], help="Hydra overrides of eval: the test set (e.g. data=folder data.root=DIR)")
    parser.add_argument("--test-photos", nargs="+", default=list(SAMPLES_TEST_PHOTOS),
                        help="on the embedded photos (unless --eval picks data=...): held out of every training run and tested on")
    parser.add_argument("--out", default="outputs/compare", help="output folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``joint-colsr-compare``): returns nothing, so the exit status is 0 on success."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    compare(parse_args(argv))


if __name__ == "__main__":
    main()
