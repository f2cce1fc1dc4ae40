# Everything the project needs is installed from here into .venv; a fresh machine needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean deb systemd-test

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

# The Debian 12 package (issue 12): dist/nextmv-watcher_<version>_<arch>.deb, its venv built with Debian's
# python3 in a debootstrap tree cached in $(ROOTFS) (packaging/deb/). Needs root, debootstrap, systemd-nspawn.
ROOTFS ?= .cache/rootfs-bookworm
deb: setup
	packaging/deb/build.sh $(ROOTFS)

# The package under a real systemd: that tree booted with systemd-nspawn (tests/system; a few minutes).
systemd-test: deb
	NEXTMV_SYSTEMD_ROOTFS=$(ROOTFS) $(BIN)/python -m pytest -p no:cacheprovider tests/system

clean:
	rm -rf $(VENV) build dist *.egg-info
