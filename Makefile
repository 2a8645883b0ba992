# `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vlmsae-installed

.PHONY: install test test-all demo bench lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first: an unpinned torch requirement would otherwise pull the CUDA build. The
# interop extra (sae-lens, dictionary-learning -> nnsight -> torchvision) is installed with
# the installed torch version named, so that pip picks the torchvision built for it instead
# of replacing the CPU torch with a newer CUDA one.
TORCH_PIN = torch==$$($(PY) -c "import torch; print(torch.__version__.split('+')[0])")
$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev,interop]" "$(TORCH_PIN)"
	@# nnsight (under dictionary-learning) pulls torchvision, whose PyPI build is made for the
	@# CUDA torch: next to the CPU torch its operators fail to register, and transformers'
	@# image models then fail to import. Nothing here uses torchvision: remove a broken one.
	$(PY) -c "import torchvision" 2>/dev/null || $(PY) -m pip uninstall -y torchvision
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest

test-all: install
	$(PY) -m pytest -m ""

demo: install
	$(VENV)/bin/vlmsae demo

bench: install
	@for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache
