# Set-up and entry points; everything works on a fresh clone with python3 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench clean slurm-up slurm-down

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch pinned: 2.13.0 is the CPU wheel available locally; other versions pull a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,export,slurm]"
	# the zoo's own package checker, for the BMZ tests: bioimageio.core 0.11.0 pins
	# bioimageio.spec 0.5.12, which fails with current pydantic; it runs with our 0.5.14 (tested)
	$(BIN)/pip install --quiet xarray imagecodecs
	$(BIN)/pip install --quiet --no-deps "bioimageio.core==0.11.0"
	touch $(STAMP)

install: $(STAMP)

# Ends with three lines: what ran, the main score, where the outputs and results/demo/report.html are
demo: $(STAMP)
	$(BIN)/snakemake --cores all
	@$(BIN)/biapipe summary results/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(BIN)/snakemake --lint --cores 1

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_predict.py

# A one-node SLURM test cluster (root; installs slurm-wlm and munge) for tests/test_slurm.py
slurm-up:
	timeout -s KILL 600 bash .ci/start-slurm.sh

slurm-down:
	timeout -s KILL 120 bash .ci/stop-slurm.sh

clean:
	rm -rf results data/demo .snakemake
