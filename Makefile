# Two commands do all the set-up:  `make demo` (the main job)  and  `make test` (the suite).
# The virtual environment sees system packages, so a GPU host's own torch (>= 2.2) is used as it is;
# where no torch is importable, torch==2.13.0 is installed first (a CPU build on CPU-only hosts here),
# so that pip never resolves `torch>=2.2` to a newest build with gigabytes of CUDA packages.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 2))" \
		|| $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m collapse demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=12

clean:
	rm -rf $(VENV) results/* data/
