# noisystudent: the two commands a new user types are `make run` and `make test`; each installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST ?= /usr/share/datasets/fashion-mnist
RUN_DIR ?= runs/fashion_mnist
CONFIG ?= configs/fashion_mnist.yaml
export RAY_AUTH_MODE ?= disabled
export RAY_ENABLE_UV_RUN_RUNTIME_ENV ?= 0

.PHONY: install data test test-all run run-full bench bench-accuracy report clean help

help:
	@echo "make run             the full Noisy Student loop on Fashion-MNIST (CPU-sized default)"
	@echo "make test            the test suite (installs first)"
	@echo "make run-full        the longer benchmark config"
	@echo "make bench           throughput benchmarks against a bare PyTorch loop"
	@echo "make bench-accuracy  teacher / 3 generations / oracle accuracy table (42+ min on 2 cores)"
	@echo "make clean           remove runs, caches and the venv"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed data

# Fashion-MNIST comes from Debian; installed when apt is there and the files are missing.
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian package dataset-fashion-mnist"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else echo "warning: $(FMNIST) missing and no apt-get; Fashion-MNIST tests will be skipped"; fi; \
	fi

test: install
	$(BIN)/pytest -q -m "not slow" tests

test-all: install
	$(BIN)/pytest -q tests

run: install
	$(BIN)/noisystudent run $(CONFIG) --run-dir $(RUN_DIR)
	$(BIN)/noisystudent status $(RUN_DIR)
	$(BIN)/noisystudent report $(RUN_DIR)

run-full: install
	$(BIN)/noisystudent run configs/fashion_mnist_full.yaml --run-dir runs/fashion_mnist_full
	$(BIN)/noisystudent status runs/fashion_mnist_full
	$(BIN)/noisystudent report runs/fashion_mnist_full

bench: install
	$(BIN)/python -m bench

bench-accuracy: install
	$(BIN)/python -m bench.accuracy

clean:
	rm -rf runs bench/results .pytest_cache $(VENV) *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
