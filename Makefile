# `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vlmsae-installed
DOCS_STAMP := $(VENV)/.vlmsae-docs-installed

.PHONY: install test test-all demo bench lint format docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first: an unpinned torch requirement would otherwise pull the CUDA build. The
# interop extra (sae-lens, dictionary-learning -> nnsight -> torchvision) is installed with
# the installed torch version named, so that pip picks the torchvision built for it instead
# of replacing the CPU torch with a newer CUDA one.
TORCH_PIN = torch==$$($(PY) -c "import torch; print(torch.__version__.split('+')[0])")
TORCH_FIRST = $(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
$(STAMP): pyproject.toml | $(PY)
	$(TORCH_FIRST)
	$(PY) -m pip install -e ".[dev,interop,hf,wds]" "$(TORCH_PIN)"
	@# nnsight (under dictionary-learning) pulls torchvision, whose PyPI build is made for the
	@# CUDA torch: next to the CPU torch its operators fail to register, and transformers'
	@# image models then fail to import. Nothing here uses torchvision: remove a broken one.
	$(PY) -c "import torchvision" 2>/dev/null || $(PY) -m pip uninstall -y torchvision
	touch $(STAMP)

install: $(STAMP)

# The docs extra alone (not the interop one); mkdocstrings reads src/ without importing it.
$(DOCS_STAMP): pyproject.toml | $(PY)
	$(TORCH_FIRST)
	$(PY) -m pip install -e ".[docs]" "$(TORCH_PIN)"
	touch $(DOCS_STAMP)

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

# The documentation site, into site/ (open site/index.html). --strict: a warning (a broken
# link or anchor, a page missing from the nav, a docstring griffe cannot read) fails it.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) runs site .pytest_cache
