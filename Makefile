# joint_colsr: `make train` trains the paper's network on the embedded photos; `make test` runs the suite.
# Both create .venv and install what they need on first use (pinned by requirements/constraints.txt).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast test-stress bench bench-compare gpu-check wheelhouse clean sweep-section4 sweep-variants sweep-seeds sweep-optuna sweep-any_scale sweep-exemplar cascade-colorize-first cascade-upscale-first compare slurm-local slurm-local-down

help: ## show this help
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {name[NR] = $$1; text[NR] = $$2; if (length($$1) > w) w = length($$1)} END {fmt = "  make %-" w "s   %s\n"; for (i = 1; i <= NR; i++) printf fmt, name[i], text[i]}'
	@echo "  Pass Hydra overrides with ARGS, e.g. make train ARGS='trainer.max_epochs=2 data.batch_size=8'"

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv and install the package with its dev extras

train: $(STAMP) ## train the paper's joint network on the embedded sample photos (time: README, Quick start)
	$(PY) -m joint_colsr.train $(ARGS)

test: $(STAMP) ## run the whole test suite (CPU, tiny widths)
	$(PY) -m pytest -n 2 --dist loadfile -q $(ARGS)

# Under load: LOAD busy processes per core compete with the suite (tests/stress.py). The suite
# passes at LOAD=8; it takes about LOAD+1 times as long, so narrow it with ARGS (e.g. ARGS=tests/run).
LOAD ?= 8
test-stress: $(STAMP) ## the suite while LOAD (default 8) busy processes per core load the machine
	$(PY) -m tests.stress --load $(LOAD) -- -n 2 --dist loadfile -q $(ARGS)

test-fast: $(STAMP) ## run the suite without the slow tests
	$(PY) -m pytest -n 2 --dist loadfile -q -m "not slow" $(ARGS)

# Sweeps (Hydra multirun, conf/sweep/*.yaml; docs/sweeps.md). Tiny form: ARGS=debug=tiny.
# Each writes outputs/<sweep>/multiruns/<date>/{N/,sweep_summary.md}.
sweep-section4: $(STAMP) ## Section IV: residual blocks x width x input R x L* source (81 jobs)
	PYTHON=$(PY) experiments/section4.sh $(ARGS)

sweep-variants: $(STAMP) ## every model variant at an equal training budget (joint vs cascade)
	PYTHON=$(PY) experiments/variants.sh $(ARGS)

sweep-seeds: $(STAMP) ## 5 seeds of one config; sweep_summary.md gives 95% confidence intervals
	PYTHON=$(PY) experiments/seeds.sh $(ARGS)

sweep-optuna: $(STAMP) ## Optuna search over learning rate and width, maximizing val/psnr_joint
	PYTHON=$(PY) experiments/optuna.sh $(ARGS)

sweep-any_scale: $(STAMP) ## continuous magnification: training scale range x implicit upsampler width
	PYTHON=$(PY) experiments/any_scale.sh $(ARGS)

sweep-exemplar: $(STAMP) ## exemplar-guided mode: exemplar kind x automatic share x attention width
	PYTHON=$(PY) experiments/exemplar.sh $(ARGS)

cascade-colorize-first: $(STAMP) ## the paper's cascade: ic_only and sr_only trained separately, composed frozen (colorize first)
	$(PY) -m joint_colsr.two_stage order=colorize_first $(ARGS)

cascade-upscale-first: $(STAMP) ## the same, upscale first
	$(PY) -m joint_colsr.two_stage order=upscale_first $(ARGS)

compare: $(STAMP) ## joint or cascade? every contender at equal training FLOPs, N seeds, both protocols -> comparison.md/.json/.png
	$(PY) -m joint_colsr.compare $(ARGS)

# A one-node SLURM cluster on this machine (root; Debian: apt-get install slurm-wlm munge),
# to try hydra/launcher=slurm (docs/sweeps.md). State, logs and slurm.conf: $(SLURM_LOCAL_DIR).
SLURM_LOCAL_DIR ?= /tmp/joint_colsr-slurm
slurm-local: ## start a one-node SLURM cluster here (root); then export SLURM_CONF as it prints
	$(PYTHON) -m joint_colsr.ops.slurm_local up --dir $(SLURM_LOCAL_DIR)

slurm-local-down: ## cancel its jobs and stop its daemons
	$(PYTHON) -m joint_colsr.ops.slurm_local down --dir $(SLURM_LOCAL_DIR)

bench: $(STAMP) ## measure speed (models, Lightning vs raw loop, fast paths, data); writes benchmarks/results.json and RESULTS.md
	$(PY) -m joint_colsr.bench $(ARGS)

bench-compare: $(STAMP) ## the tiny compare form's wall time, fresh and reused (run it alone) -> benchmarks/compare_tiny.json
	$(PY) -m joint_colsr.bench.compare_tiny $(ARGS)

# The GPU check runs where a GPU is, often offline: with the python that has the suite's
# dependencies (.venv if present, else $(PYTHON); see docs/offline-install.md), never creating a venv.
GPU_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check: ## ~8 min on one GPU: paper-recipe throughput, syncs/step, EMA device, smoke run, determinism -> benchmarks/gpu-check.json + RESULTS.md
	$(GPU_PY) -m joint_colsr.bench --gpu-check $(ARGS)

PYTHON_VERSION ?= 3.12
WHEELHOUSE ?= wheelhouse
FREEZE ?=
wheelhouse: $(STAMP) ## wheels for an offline install on a CPython 3.12 (PYTHON_VERSION=) x86-64 Linux node; FREEZE=its pip freeze is left out
	$(PY) -m joint_colsr.ops.wheelhouse --python-version $(PYTHON_VERSION) --out $(WHEELHOUSE) $(if $(FREEZE),--provided $(FREEZE)) $(ARGS)

clean: ## remove outputs of runs (not the venv)
	rm -rf outputs multirun .pytest_cache
