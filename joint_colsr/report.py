"""Turn a multirun directory into one table and one plot: ``python -m joint_colsr.report DIR``
(config: ``conf/report.yaml``; ``DIR`` is short for ``dir=DIR``).

A multirun directory (``python -m joint_colsr.train|eval --multirun ...``) holds numbered
run folders, each with ``.hydra/overrides.yaml`` and ``metrics.json``. The report writes,
into ``out_dir`` (default: ``DIR`` itself):

* ``report.md``: one row per run, Table III style: the overrides that differ between runs,
  then the metrics (``metrics=[...]``; default: the evaluation metrics that every run has,
  or the training run's validation metrics);
* ``report_<metric>.png``: ``metric`` against the swept parameter (``x=KEY``; default: the
  one override that varies, or, with several, the first and one line per value of the rest).
"""

from __future__ import annotations

from joint_colsr.run.fast_help import answer_help_early

answer_help_early(__name__, 'report')  # before torch/Lightning are imported (run/fast_help.py)

import json
import logging
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from joint_colsr.run.config_checks import ConfigError, hydra_command
from joint_colsr.eval import GUIDED_MARK, markdown_table

log = logging.getLogger(__name__)

#: Metrics reported by default, in this order, when the runs have them (eval first, then training).
DEFAULT_METRICS = (
    "psnr", "psnr_joint", "ssim", "ssim_joint", "psnr_ab", "psnr_y", "auc_ab", "colorfulness_gap", "psnr_gray",
    "val/psnr", "val/psnr_joint", "val/psnr_gray", "val/loss", "fit_seconds", "params",
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return None


def load_runs(root: Path) -> list[dict[str, Any]]:
    """Every run below ``root`` with both ``.hydra/overrides.yaml`` and ``metrics.json``, in run-number order.

    Returns:
        dicts with ``name`` (folder relative to ``root``), ``overrides`` (key -> value
        string, in order) and ``metrics``.
    """
    if not root.is_dir():
        raise ConfigError(f"dir={root} is not a folder")
    runs = []
    for overrides_file in root.rglob(".hydra/overrides.yaml"):
        run_dir = overrides_file.parent.parent
        metrics_file = run_dir / "metrics.json"
        if not metrics_file.is_file():
            continue  # listed by left_out_runs
        overrides = {}
        for item in yaml.safe_load(overrides_file.read_text()) or []:
            key, _, value = str(item).partition("=")
            overrides[key.lstrip("+~")] = value
        runs.append({"name": run_dir.relative_to(root).as_posix() or ".", "overrides": overrides,
                     "metrics": json.loads(metrics_file.read_text())})
    if not runs:
        raise ConfigError(f"dir={root} holds no runs (folders with .hydra/overrides.yaml and metrics.json); "
                          "expected the output of a --multirun, e.g. DIR/0/, DIR/1/, ...")

    def order(run: dict) -> tuple:
        return tuple((0, int(p)) if p.isdigit() else (1, p) for p in run["name"].split("/"))

    return sorted(runs, key=order)


def _overrides_text(run_dir: Path) -> str:
    return " ".join(str(o) for o in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or [])


def left_out_runs(root: Path) -> list[dict[str, str]]:
    """The runs below ``root`` that :func:`load_runs` cannot tabulate (no ``metrics.json``: the
    job failed or has not finished), each with ``name``, ``overrides`` and ``reason`` (the last
    line of the job's ``error.txt``, which the sweep summary writes for a failed job)."""
    out = []
    for overrides_file in root.rglob(".hydra/overrides.yaml"):
        run_dir = overrides_file.parent.parent
        if (run_dir / "metrics.json").is_file():
            continue
        error = run_dir / "error.txt"
        lines = [line for line in error.read_text(errors="replace").splitlines() if line.strip()] if error.is_file() else []
        reason = lines[-1].strip() if lines else "no metrics.json and no error.txt: still running, or killed"
        out.append({"name": run_dir.relative_to(root).as_posix() or ".", "overrides": _overrides_text(run_dir), "reason": reason})
    return sorted(out, key=lambda r: tuple((0, int(p)) if p.isdigit() else (1, p) for p in r["name"].split("/")))


def varying_keys(runs: list[dict[str, Any]]) -> list[str]:
    """Override keys whose value is not the same in every run (a key missing from a run counts as a value)."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run["overrides"] if k not in keys]
    return [k for k in keys if len({run["overrides"].get(k) for run in runs}) > 1]


def choose_metrics(runs: list[dict[str, Any]], wanted: list[str] | None) -> list[str]:
    if wanted:
        unknown = [m for m in wanted if all(m not in run["metrics"] for run in runs)]
        if unknown:
            have = sorted({k for run in runs for k, v in run["metrics"].items() if _number(v) is not None})
            raise ConfigError(f"metrics {unknown} are in no run's metrics.json; available: {have}")
        return list(wanted)
    return [m for m in DEFAULT_METRICS if any(_number(run["metrics"].get(m)) is not None for run in runs)]


def _as_float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def plot(runs: list[dict[str, Any]], metric: str, x_key: str, path: Path) -> Path:
    """``metric`` against override ``x_key``: one line per combination of the other varying overrides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [k for k in varying_keys(runs) if k != x_key]
    lines: dict[str, list[tuple[Any, float]]] = defaultdict(list)
    for run in runs:
        y = _number(run["metrics"].get(metric))
        if y is None or not math.isfinite(y):
            continue
        label = ", ".join(f"{k}={run['overrides'].get(k, '-')}" for k in others) or metric
        lines[label].append((run["overrides"].get(x_key, "(default)"), y))
    if not lines:
        raise ConfigError(f"no run has a finite value of metric={metric}")
    all_x = [x for points in lines.values() for x, _ in points]
    numeric = all(_as_float(x) is not None for x in all_x)
    categories = sorted(set(all_x), key=lambda v: (_as_float(v) is None, _as_float(v) or 0.0, str(v)))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, points in lines.items():
        if numeric:
            points = sorted(points, key=lambda p: _as_float(p[0]))
            xs = [_as_float(x) for x, _ in points]
        else:
            points = sorted(points, key=lambda p: categories.index(p[0]))
            xs = [categories.index(x) for x, _ in points]
        ax.plot(xs, [y for _, y in points], marker="o", label=label)
    if numeric:
        values = sorted({_as_float(x) for x in all_x})
        if values[0] > 0 and values[-1] / values[0] >= 10:  # learning rates, sizes: spread on a log axis
            ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(values, [f"{v:g}" for v in values], rotation=20, ha="right")
    else:
        ax.set_xticks(range(len(categories)), categories, rotation=20, ha="right")
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if len(lines) > 1 or others:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def report(cfg: DictConfig) -> dict[str, Any]:
    """Write ``report.md`` and ``report_<metric>.png`` for the multirun ``cfg.dir``; return what was written."""
    if not cfg.get("dir"):
        raise ConfigError("pass the multirun directory: python -m joint_colsr.report DIR (or dir=DIR)")
    root = Path(str(cfg.dir)).expanduser()
    runs = load_runs(root)
    out_dir = Path(str(cfg.get("out_dir") or root)).expanduser()
    wanted = list(cfg.metrics) if cfg.get("metrics") else None
    metrics = choose_metrics(runs, wanted)
    keys = varying_keys(runs)
    rows = [[_run_name(run), *(run["overrides"].get(k, "-") for k in keys), *(_cell(run["metrics"].get(m)) for m in metrics)]
            for run in runs]
    header = ["run", *keys, *metrics]
    shared = {k: v for k, v in runs[0]["overrides"].items() if k not in keys}
    text = [f"# Report: {root}", ""]
    if shared:
        text += ["Common to every run: " + ", ".join(f"`{k}={v}`" for k, v in shared.items()), ""]
    text.append(markdown_table(header, rows))
    if any(run["metrics"].get("uses_ground_truth_l") for run in runs):
        text += ["", f"{GUIDED_MARK}: the model is fed the ground-truth high-resolution L* (an advantage the others do not "
                 "have); its own-L* columns are empty; compare it only with other guided runs."]
    unfinished = [run["name"] for run in runs if run["metrics"].get("status", "completed") != "completed"]
    if unfinished:
        text += ["", f"Not finished (their last metrics are shown): {', '.join(f'`{n}` ({_status(runs, n)})' for n in unfinished)}."]
    left_out = left_out_runs(root)
    if left_out:
        text += ["", f"## Left out: {len(left_out)} run(s) without metrics", "",
                 markdown_table(["run", "overrides", "why"], [[r["name"], f"`{r['overrides']}`", r["reason"].replace("|", "\\|")] for r in left_out])]
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"runs": len(runs), "varying": keys, "metrics": metrics, "left_out": left_out, "unfinished": unfinished}
    metric = cfg.get("metric") or (metrics[0] if metrics else None)
    x_key = cfg.get("x") or (keys[0] if keys else None)
    if metric and x_key:
        if x_key not in keys and all(x_key not in run["overrides"] for run in runs):
            raise ConfigError(f"x={x_key} is not an override of these runs; the varying ones are {keys}")
        png = plot(runs, metric, x_key, out_dir / f"report_{metric.replace('/', '_')}.png")
        text += ["", f"![{metric} against {x_key}]({png.name})", ""]
        written["plot"] = str(png)
    else:
        log.warning("no plot: %s", "no override varies between runs" if not x_key else "no metric")
    md = out_dir / "report.md"
    md.write_text("\n".join(text))
    written["table"] = str(md)
    print(f"{len(runs)} runs -> {md}" + (f" and {written['plot']}" if "plot" in written else ""))
    if left_out:
        print(f"left out {len(left_out)} run(s) without metrics (failed or unfinished), listed in {md.name}: "
              + "; ".join(f"{r['name']}: {r['reason']}" for r in left_out))
    return written


def _status(runs: list[dict[str, Any]], name: str) -> str:
    return next(str(run["metrics"].get("status")) for run in runs if run["name"] == name)


def _run_name(run: dict[str, Any]) -> str:
    return f"{run['name']} ({GUIDED_MARK})" if run["metrics"].get("uses_ground_truth_l") else run["name"]


def _cell(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # counts (params, steps, epochs) print as integers, not 24643.00
    number = _number(value)
    return number if number is not None else ("" if value is None else value)


def _positional_dir(argv: list[str]) -> list[str]:
    """``report DIR`` -> ``report dir=DIR`` (Hydra takes only ``key=value``)."""
    out = list(argv)
    for i, arg in enumerate(out[1:], start=1):
        if not arg.startswith("-") and "=" not in arg:
            out[i] = f"dir={arg}"
            break
    return out


@hydra_command("report")
def _main(cfg: DictConfig) -> None:
    report(cfg)


def main() -> None:
    """``joint-colsr-report DIR [KEY=VALUE ...]`` (also ``python -m joint_colsr.report``)."""
    sys.argv = _positional_dir(sys.argv)
    _main()


if __name__ == "__main__":
    main()
