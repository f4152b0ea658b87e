#!/usr/bin/env bash
# Hydra multirun: conf/sweep/exemplar.yaml (docs/sweeps.md): exemplar kind x automatic share x attention width.
# Extra arguments are Hydra overrides, e.g. debug=tiny for the tiny form, hydra/launcher=slurm.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m joint_colsr.train -m sweep=exemplar "$@"
