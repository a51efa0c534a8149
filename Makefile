# STE Lab — every target bootstraps .venv, so a fresh clone needs only `make test`.
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

bench: install  ## benchmarks: QuantReLU vs nn.ReLU train step, 10^4 exact CGD steps
	$(PY) benchmarks/bench_quant.py
	$(PY) benchmarks/bench_theory.py

.PHONY: help install test test-all lint train demo reproduce local-data wandb-sync bench
