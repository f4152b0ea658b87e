#!/usr/bin/env bash
# Hydra multirun: conf/sweep/section4.yaml (docs/sweeps.md). Extra arguments are Hydra overrides,
# e.g. debug=tiny for the tiny form, hydra/launcher=slurm for a cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m joint_colsr.train -m sweep=section4 "$@"
