# Everything the project needs is installed from here into .venv; a fresh machine needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(BIN)/nextmv-watcher: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/nextmv-watcher

demo: setup
	$(BIN)/nextmv-watcher demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check watcher tests
	$(BIN)/mypy

# The benchmark of issue 5 (see bench/README.md): `make bench`, or `make bench BENCH_ARGS=--quick`.
bench: setup
	$(BIN)/pip install --quiet -r bench/requirements.txt
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
