"""One planned run of ``compare``, as a Hydra job: ``python -m joint_colsr.compare_run
plan=PLAN.json run=N`` (config: ``conf/compare_run.yaml``).

A run is a contender at a seed: trained on its planned samples, then evaluated on the test
set, its ``compare_run.json`` written last (:func:`joint_colsr.compare.run_planned`).
``compare --launcher slurm`` writes the plan and sends every pending run to the cluster as
one sweep of these jobs (``-m run=1,2,... hydra/launcher=slurm``): one array task per run.
"""

from __future__ import annotations

from joint_colsr.run.fast_help import answer_help_early

answer_help_early(__name__, "compare_run")  # before torch/Lightning are imported (run/fast_help.py)

from pathlib import Path

from omegaconf import DictConfig

from joint_colsr.run.config_checks import hydra_command


@hydra_command("compare_run")
def main(cfg: DictConfig) -> None:
    from joint_colsr.compare import run_planned

    run_planned(Path(str(cfg.plan)), int(cfg.run))


if __name__ == "__main__":
    main()
