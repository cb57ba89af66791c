# Two commands do all the set-up:  `make demo` (the main job)  and  `make test` (the suite).
# The virtual environment sees system packages, so a host's own torch + torchvision pair (a GPU host's) is
# used as it is; where the pair does not import, torch==2.14.1 + torchvision==0.29.1, a pair made for each
# other, is installed first (on x86_64 here a CUDA build that runs on the CPU, ~5.5 GB, about a minute), so
# that pip never resolves an unpinned torch to a newest release. Jupyter and TensorBoard come with the
# `notebooks` extra and the dependencies: `.venv/bin/jupyter lab notebooks/` works once either target ran.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip does not compile every module it installs (~20 s of set-up; tests import a fraction of them): Python
# writes the bytecode of what is imported, once, also where the environment sets PYTHONDONTWRITEBYTECODE
# (which would recompile torch and this package at every process start: 4.4 s -> 6.9 s to import the stack)
unexport PYTHONDONTWRITEBYTECODE
PIP := $(PY) -m pip install -q --no-compile
# the torch + torchvision pair this machine's packages hold (aarch64 hosts here have a CPU build of 2.9.1)
TORCH_PAIR := $(if $(filter aarch64,$(shell uname -m)),torch==2.9.1 torchvision==0.24.1,torch==2.14.1 torchvision==0.29.1)

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PIP) $(TORCH_PAIR)
	$(PIP) -e ".[test,notebooks]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m collapse demo

# one worker per core (each at one torch thread), a test file per worker: most of the suite's time is process
# start-up and single-threaded steps, so two workers on two cores take about half the serial time (tests
# alone, clean clones: 406 s serial on 2026-12-03, 174-211 s with two workers on 2026-12-04)
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile --durations=12

clean:
	rm -rf $(VENV) results/* data/
