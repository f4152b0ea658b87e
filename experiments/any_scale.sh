#!/usr/bin/env bash
# Hydra multirun: conf/sweep/any_scale.yaml (docs/sweeps.md): scale range x implicit width.
# Extra arguments are Hydra overrides, e.g. debug=tiny for the tiny form, hydra/launcher=slurm.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m joint_colsr.train -m sweep=any_scale "$@"
