# STE Lab — every target creates .venv on first use; datasets download on first use (offline: `make local-data` or docs/training.md#data).
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build this project is tested with (CI installs exactly these; pyproject.toml holds ranges).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PROFILE ?= smoke
SEEDS ?=
LAUNCHER ?=
DATA_NOTE ?=
EXTRA ?=
ARGS ?=
SHARED ?= ../shared/data

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS) -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## create .venv with the pinned dependencies

test: install  ## fast test suite (CPU, a few minutes)
	$(PY) -m pytest -m "not slow" -q

test-all: install  ## every test, real-data and pipeline checks included (what CI runs)
	$(PY) -m pytest -q

lint: install  ## ruff: fails on any finding
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

train: install  ## one training run: make train ARGS="ste=relu quant.bits=4"
	$(PY) -m src.train $(ARGS)

demo: install  ## offline quick look (minutes, CPU, no dataset): two-layer model per STE, certificate, figures, report
	$(PY) -m src.reproduce --profile demo

reproduce: install  ## the paper end to end: make reproduce PROFILE=paper|smoke SEEDS=0,1,2 LAUNCHER=joblib EXTRA="trainer=gpu"
	$(PY) -m src.reproduce --profile $(PROFILE) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(LAUNCHER),--launcher $(LAUNCHER)) \
		$(if $(DATA_NOTE),--data-note "$(DATA_NOTE)") $(EXTRA)

local-data: install  ## dev/CI only: genuine MNIST and the CIFAR-10 JPEG rebuild from $(SHARED) into data/
	mkdir -p data/MNIST/raw && cp -n $(SHARED)/MNIST/raw/*.gz data/MNIST/raw/
	test -d data/cifar-10-batches-py || $(PY) $(SHARED)/cifar10_from_jpeg.py data
	@echo "CIFAR-10 in data/ is the JPEG rebuild: use it with EXTRA=\"data.verify_checksums=false\""

wandb-sync: install  ## upload every offline W&B run under outputs/ (after `wandb login`)
	find outputs -type d -path '*/wandb/offline-run-*' -prune -print0 | xargs -0 -r $(VENV)/bin/wandb sync

bench: install  ## benchmarks: train step, memory and epoch of QuantReLU vs nn.ReLU; 10^4 exact CGD steps (ARGS go to bench_train)
	$(PY) benchmarks/bench_train.py $(ARGS)
	$(PY) benchmarks/bench_theory.py

# Offline GPU nodes: `make wheelhouse PY=3.12` on a machine with internet and python3 >= 3.11 (PY: the node's Python
# version, default this machine's; Linux x86-64 wheels), copy the checkout with wheelhouse/ over, then
# `make install-offline` there.
wheelhouse:  ## download every dependency wheel (torch pins included) for an offline node: make wheelhouse PY=3.12
	python3 -m pip wheel -q --no-deps --wheel-dir wheelhouse antlr4-python3-runtime==4.9.3  # hydra's, sdist only: pure Python
	python3 -m pip download --dest wheelhouse --find-links wheelhouse --only-binary=:all: \
		--python-version $(or $(filter 3.%,$(PY)),$(shell python3 -c 'import sys; print(*sys.version_info[:2], sep=".")')) \
		--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
		$(TORCH_PINS) $(shell python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
			print(*[repr(d) for d in p["project"]["dependencies"] + p["project"]["optional-dependencies"]["dev"] + p["build-system"]["requires"]])')

install-offline:  ## create .venv from wheelhouse/ alone (no internet): after `make wheelhouse` elsewhere
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-index --find-links wheelhouse $(TORCH_PINS) -e '.[dev]'  # setuptools too, for -e
	touch $(VENV)/.installed

.PHONY: help install test test-all lint train demo reproduce local-data wandb-sync bench wheelhouse install-offline

slurm-up:  ## a one-node SLURM cluster on this machine (root; installs slurm-wlm and munge with apt-get when missing)
	scripts/slurm/cluster.sh up

slurm-down:  ## stop the local SLURM cluster's daemons (by their pids)
	scripts/slurm/cluster.sh down

.PHONY: slurm-up slurm-down
