# STE Lab — every target bootstraps .venv, so a fresh clone needs only `make test`.
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build this project is tested with (CI installs exactly these; pyproject.toml holds ranges).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PROFILE ?= smoke
ARGS ?=

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

bench: install  ## benchmarks: QuantReLU vs nn.ReLU train step
	$(PY) benchmarks/bench_quant.py

.PHONY: help install test test-all lint train bench
