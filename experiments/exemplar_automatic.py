"""Does training with exemplars cost automatic mode anything? Equal compute, on a CPU.

    python experiments/exemplar_automatic.py [--test-dir DIR] [--seeds 0 1 2 3 4] [--budget-steps 1000]
                                             [--work outputs/exemplar_automatic] [--out benchmarks/exemplar_automatic]

One ``compare`` run (``python -m joint_colsr.compare``; its rules: equal training FLOPs, paired
differences with seed and photo variance, a verdict in words):

* contenders: ``joint_paper`` (the reference), ``residual_joint`` (the exemplar net's backbone,
  trained without exemplars) and ``joint_exemplar`` trained on ``data.exemplar=mix`` with 30 %
  of the samples left without one (compare's recipe), **scored in automatic mode**
  (``eval exemplar=none``): no exemplar at test time;
* compute: the training FLOPs of ``--budget-steps`` steps of 8 of ``joint_paper``, and
  ``--match inference_flops``: the other two nets' ``width_mult`` is solved so that one image
  costs what ``joint_paper``'s costs (within 5 %). ``joint_exemplar``'s training FLOPs count its
  exemplar path on the 70 % of samples that carry one, so it sees fewer samples on the budget:
  the real price of learning both modes;
* data: the embedded photos (32 -> 64 pixels, x2), the compare's held-out split aside;
  the test set is ``--test-dir`` (default: Kodak24 under ``../shared/datasets/kodak24`` when
  present, else compare's two held-out embedded photos).

Besides compare's pairs against ``joint_paper``, ``joint_exemplar`` is paired against
``residual_joint`` (same photos and seeds, :func:`joint_colsr.compare.paired_interval`): the
cost of the exemplar mode on its own backbone. Writes to ``--out``: ``comparison.md``,
``comparison.json``, ``comparison.png``, ``paired.png`` (the figure docs/architecture.md
shows), ``exemplar_vs_backbone.json`` (with ``joint_exemplar``'s inference FLOPs in automatic
mode: compare matches them steered, with the exemplar path) and ``run.json`` (the command, the machine, the load).
The compare folder is ``--work``: run again, finished runs are reused (same code and config).
``--plot-only`` redraws ``paired.png`` from ``--out``'s ``comparison.json``. A few CPU minutes
per run: tiny nets, a measurement of this question at this budget, not of the method at scale.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KODAK24 = REPO.parent / "shared" / "datasets" / "kodak24"
MODELS = ["joint_paper", "residual_joint", "joint_exemplar"]
TRAIN = ["data.input_size=32", "data.output_size=64", "data.batch_size=8", "data.num_workers=0", "trainer.accelerator=cpu"]
#: Metrics of the exemplar-vs-backbone pair.
PAIRED_METRICS = ("psnr_joint", "psnr", "psnr_y")


def compare_args(seeds: list[int], budget_steps: int, test_dir: Path | None, work: Path) -> list[str]:
    """The compare command line (after ``python -m joint_colsr.compare``)."""
    test = ["data=folder", f"data.root={test_dir}"] if test_dir is not None else []
    return ["--models", *MODELS, "--reference", "joint_paper", "--seeds", *map(str, seeds),
            "--budget-steps", str(budget_steps), "--match", "inference_flops", "--train", *TRAIN,
            "--eval", *test, "exemplar=none", "--out", str(work)]


def exemplar_vs_backbone(work: Path, seeds: list[int]) -> dict:
    """``joint_exemplar - residual_joint`` per metric on the same photos and seeds, with compare's interval and words."""
    from joint_colsr.compare import paired_interval, read_per_image, verdict

    runs = {name: {seed: read_per_image(work / name / f"seed{seed}" / "eval" / "per_image.csv") for seed in seeds}
            for name in ("joint_exemplar", "residual_joint")}
    out = {}
    for metric in PAIRED_METRICS:
        paired = paired_interval(runs["joint_exemplar"], runs["residual_joint"], metric)
        out[metric] = {**paired, "verdict": verdict("joint_exemplar", "residual_joint", paired)["text"]}
    return out


def automatic_inference_flops(width_mult: float) -> int:
    """FLOPs of one automatic-mode forward pass (no exemplar) of ``joint_exemplar`` at ``width_mult``
    (compare matches its inference FLOPs steered by an exemplar, which runs the trunk twice)."""
    import torch
    from hydra import compose, initialize_config_dir

    from joint_colsr import CONFIG_DIR
    from joint_colsr.assembly import build_system
    from joint_colsr.model_table import forward_flops

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=joint_exemplar", *TRAIN, f"model.net.width_mult={width_mult}"])
    with torch.device("meta"):
        net = build_system(cfg).net
    return forward_flops(net, int(cfg.data.input_size), int(cfg.data.output_size), steered=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-dir", type=Path, default=KODAK24 if KODAK24.is_dir() else None,
                        help="a folder of test photos (default: Kodak24 when present, else the held-out embedded photos)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget-steps", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "exemplar_automatic",
                        help="compare's folder (its runs are reused by the next identical call)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "exemplar_automatic")
    parser.add_argument("--plot-only", action="store_true", help="redraw paired.png from --out's comparison.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from joint_colsr.compare import plot_paired

    if args.plot_only:
        return {"paired": str(plot_paired(json.loads((args.out / "comparison.json").read_text()), args.out / "paired.png"))}
    if args.test_dir is not None and not args.test_dir.is_dir():
        raise SystemExit(f"--test-dir {args.test_dir}: not a folder")
    load_before = os.getloadavg()
    start = time.perf_counter()
    cmp_args = compare_args(args.seeds, args.budget_steps, args.test_dir, args.work)
    print("$ python -m joint_colsr.compare " + " ".join(cmp_args), flush=True)
    subprocess.run([sys.executable, "-m", "joint_colsr.compare", *cmp_args], cwd=REPO, check=True,
                   env={**os.environ, "WANDB_MODE": "offline"})
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("comparison.md", "comparison.json", "comparison.png", "paired.png"):
        shutil.copy2(args.work / name, args.out / name)
    backbone = exemplar_vs_backbone(args.work, args.seeds)
    width = json.loads((args.out / "comparison.json").read_text())["contenders"]["joint_exemplar"]["width_mult"]
    backbone["joint_exemplar_automatic_inference_flops"] = automatic_inference_flops(width)
    (args.out / "exemplar_vs_backbone.json").write_text(json.dumps(backbone, indent=1) + "\n")
    record = {"command": "python experiments/exemplar_automatic.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "compare": "python -m joint_colsr.compare " + " ".join(cmp_args).replace(str(REPO) + "/", ""),
              "test_set": "kodak24" if args.test_dir == KODAK24 else (str(args.test_dir) if args.test_dir else "embedded held-out"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
              "wall_seconds": round(time.perf_counter() - start, 1), "date": time.strftime("%Y-%m-%d")}
    (args.out / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    print((args.out / "comparison.md").read_text())
    print("joint_exemplar vs residual_joint:", json.dumps({m: backbone[m]["verdict"] for m in PAIRED_METRICS}, indent=1))
    return record


if __name__ == "__main__":
    main()
