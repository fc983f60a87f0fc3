# lensutil: `make doctor` checks a setup, `make test` runs everything. Both install first if needed.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
# The stamp's name carries a hash of pyproject.toml, so editing the dependencies re-installs.
HASH := $(shell python3 -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest()[:12])')
STAMP := $(VENV)/.installed-$(HASH)

# One pytest run: unit tests, every notebook under nbval, the papermill runs and the book build.
# nbval's sanitiser, kernel and skip rules are in conftest.py, so `pytest --nbval notebooks/` typed by
# hand compares notebooks exactly as this does.
PYTEST_ARGS := tests notebooks --nbval --durations=10

.PHONY: help install doctor test test-fast book clean-book lab tl-compat

help:
	@echo "make doctor   install if needed, then run 'lensutil doctor'"
	@echo "make test     install if needed, then run every test (unit, notebooks, papermill, book)"
	@echo "make book     build the Jupyter Book into book/_build/html"
	@echo "make tl-compat TL_TESTS=<TransformerLens v2.18.0 tests folder>  run TL 2.18's offline tests against lensutil"
	@echo "make lab      install if needed, then open the notebooks in JupyterLab (LAB_ARGS=... passes options)"

$(STAMP): pyproject.toml scripts/install.sh
	scripts/install.sh

install: $(STAMP)

doctor: $(STAMP)
	$(BIN)/lensutil doctor

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# Unit tests only, skipping the real checkpoint: a quick loop while editing the library.
test-fast: $(STAMP)
	$(BIN)/pytest tests -m "not slow" --ignore=tests/test_notebooks_papermill.py --ignore=tests/test_book.py

# JupyterLab from .venv on notebooks/. The notebooks' kernelspec is python3, which Jupyter runs with
# the server's own Python (.venv/bin/python), so `import lensutil` works; JUPYTER_PREFER_ENV_PATH=1 puts
# .venv's kernelspecs before any in ~/.local/share/jupyter. Root (a container) needs --allow-root.
lab: $(STAMP)
	JUPYTER_PREFER_ENV_PATH=1 $(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# TransformerLens 2.18's own offline tests, unchanged, through lensutil.transformer_lens.use_as_transformer_lens();
# not part of `make test` (it needs TL's tests: scripts/fetch-tl-tests.sh gets them). Prints the figures.
tl-compat: $(STAMP)
	scripts/tl-compat.sh "$(TL_TESTS)"

book: $(STAMP)
	$(BIN)/jupyter-book build book -W -n --keep-going

clean-book:
	rm -rf book/_build
