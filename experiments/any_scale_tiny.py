"""One any-scale model against fixed-scale models at equal training compute, tiny, on a CPU.

    python experiments/any_scale_tiny.py [--out benchmarks/any_scale_tiny] [--steps 300] [--seed 0]

Trains, on the embedded photos (32-pixel inputs, the held-out validation photos as the test):

* ``any_scale``: residual_joint with the implicit upsampler, scales drawn per batch from
  x1.5..x4 (``experiment=any_scale``), ``--steps`` steps of 8;
* ``fixed_x2`` and ``fixed_x4``: the same residual_joint with its fixed sub-pixel upsampler,
  trained for x2 and x4 alone, each on the training FLOPs the any-scale model spent (counted
  as ``compare`` counts them: :func:`joint_colsr.compare.net_costs`, the any-scale model at
  its range's mean pixel count), stopped by ``callbacks.sample_budget``;

then ``eval`` scores the any-scale model at x1.5, x2, x2.5, x3, x4 and x6 (outside its range)
with both fixed models at their own scale (``fixed_ckpts``), and writes ``metrics.json``,
``metrics.md``, ``per_image.csv`` and ``by_scale.png`` to ``--out``, plus ``runs.json``
(the budget and what each run trained on). Each model's last checkpoint is scored. Two test
photos and one seed: a demonstration of the machinery and of what a few CPU minutes learn,
not a result about the method (``compare --scale S`` is the rigorous form).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMON = ["model=residual_joint", "model.net.width=32", "model.net.blocks=2", "model.net.implicit_hidden=32",
          "data.input_size=32", "data.batch_size=8", "data.num_workers=0", "data.val_views=1", "trainer.accelerator=cpu",
          "model.optimizer.lr=1e-3", "callbacks=default", "logger=csv"]
ANY_SCALE = ["experiment=any_scale", "data.output_size=128", "data.val_scales=[1.5,2,3,4]"]
BUDGET = ["trainer.max_epochs=-1", "++trainer.max_steps=-1"]  # the sample budget stops the run
BATCH = 8


def _run(module: str, args: list[str], cwd: Path) -> None:
    print(f"$ python -m joint_colsr.{module} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", f"joint_colsr.{module}", *args], cwd=cwd, check=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "any_scale_tiny")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from joint_colsr.compare import net_costs

    seed = f"seed={args.seed}"
    any_costs = net_costs([*COMMON, *ANY_SCALE])
    budget = args.steps * BATCH * any_costs["train_flops_per_sample"]
    runs = {"any_scale": {"samples": args.steps * BATCH, "train_flops_per_sample": any_costs["train_flops_per_sample"]}}
    for side, name in ((64, "fixed_x2"), (128, "fixed_x4")):
        per_sample = net_costs([*COMMON, f"data.output_size={side}"])["train_flops_per_sample"]
        runs[name] = {"samples": round(budget / per_sample), "train_flops_per_sample": per_sample, "output_size": side}
    with tempfile.TemporaryDirectory(prefix="any_scale_tiny_") as tmp:
        work = Path(tmp)
        _run("train", [*COMMON, *ANY_SCALE, seed, f"trainer.max_steps={args.steps}", "trainer.max_epochs=1000",
                       f"hydra.run.dir={work / 'any_scale'}"], work)
        for name in ("fixed_x2", "fixed_x4"):
            run = runs[name]
            _run("train", [*COMMON, f"data.output_size={run['output_size']}", seed, *BUDGET,
                           f"callbacks.sample_budget.samples={run['samples']}", f"hydra.run.dir={work / name}"], work)
        for name, run in runs.items():
            metrics = json.loads((work / name / "metrics.json").read_text())
            run.update(global_step=metrics.get("global_step"), fit_seconds=metrics.get("fit_seconds"),
                       train_flops=run["samples"] * run["train_flops_per_sample"])
        fixed = ",".join(str(work / n / "checkpoints" / "last.ckpt") for n in ("fixed_x2", "fixed_x4"))
        _run("eval", [f"ckpt_path={work / 'any_scale' / 'checkpoints' / 'last.ckpt'}", "scales=[1.5,2,2.5,3,4,6]",
                      f"fixed_ckpts=[{fixed}]", f"hydra.run.dir={work / 'eval'}"], work)
        args.out.mkdir(parents=True, exist_ok=True)
        for file in ("metrics.json", "metrics.md", "per_image.csv", "by_scale.png"):
            shutil.copy2(work / "eval" / file, args.out / file)
    record = {"command": "python experiments/any_scale_tiny.py", "steps": args.steps, "seed": args.seed,
              "budget_flops": budget, "runs": runs}
    (args.out / "runs.json").write_text(json.dumps(record, indent=2) + "\n")
    print((args.out / "metrics.md").read_text())
    return record


if __name__ == "__main__":
    main()
