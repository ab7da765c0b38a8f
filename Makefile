# noisystudent: the two commands a new user types are `make run` and `make test`; each installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST ?= /usr/share/datasets/fashion-mnist
RUN_DIR ?= runs/fashion_mnist
CONFIG ?= configs/fashion_mnist.yaml
# Ray's token authentication on for the embedded instance, decided before Python imports ray (docs/security.md)
export RAY_AUTH_MODE ?= token
export RAY_ENABLE_UV_RUN_RUNTIME_ENV ?= 0

.PHONY: install data test test-all run run-full bench bench-accuracy bench-small bench-kd bench-kd-online bench-kd-ensemble bench-patience bench-anomaly bench-crossmodal bench-peers report clean clean-runs help

help:
	@echo "make run             the full Noisy Student loop on Fashion-MNIST (CPU-sized default)"
	@echo "make test            the test suite (installs first)"
	@echo "make run-full        the longer benchmark config"
	@echo "make bench           throughput benchmarks against a bare PyTorch loop"
	@echo "make bench-accuracy  teacher / 3 generations / oracles accuracy table over 3 seeds, mean +- std (~20 min a"
	@echo "                     seed on 2 cores; the first run also trains the 30-epoch converged oracle, ~26 min,"
	@echo "                     cached in runs/cache)"
	@echo "make bench-small     the example image-folder config, paths only changed, on 10 Fashion-MNIST PNGs a class:"
	@echo "                     2 generations, promotion decisions, wall time (~15 min on 2 cores)"
	@echo "make bench-kd        distillation methods (supervised, hinton, fitnet, at, fsp, sp, rkd) on ResNet-8 from a"
	@echo "                     cached ResNet-26 teacher, 3 seeds (~1 h on 2 idle cores; python -m bench.kd --quick: minutes)"
	@echo "make bench-kd-online dml, one, bss and hinton under the four teaching settings, same protocol (~1 h)"
	@echo "make bench-kd-ensemble a ResNet-8 student of an ensemble of 2 or 3 ResNet-26 teachers vs of the best single"
	@echo "                     one (chosen on validation): accuracy and fidelity, 2 seeds (~20 min on 2 cores)"
	@echo "make bench-patience  accuracy vs steps for fixed / consistent / function_matching teaching (~1 h)"
	@echo "make bench-anomaly   STPM anomaly detection per Fashion-MNIST class: synthetic defects with masks and the other"
	@echo "                     classes, image and pixel AUROC (39 min on 2 cores; python -m bench.anomaly --quick: minutes)"
	@echo "make bench-scale     label and select 10^5, 10^6 and 3x10^6 synthetic images, student epochs over 10^5 and 10^6:"
	@echo "                     driver and actor memory, img/s, docs/bench-scale.json/.png (~20 min on 2 busy cores;"
	@echo "                     python -m bench.scale --quick: minutes)"
	@echo "make bench-peers     our loop beside USB (semilearn) FixMatch and Pseudo-Label: same split, model, steps,"
	@echo "                     batch, test set, 2 seeds; installs .venv-peers first (docs/bench-peers.md;"
	@echo "                     python -m bench.peers --quick: minutes)"
	@echo "make clean           remove what can be rebuilt: the venv, caches, egg-info, bench/results (keeps runs/)"
	@echo "make clean-runs      delete runs/: every run's results and the cached converged oracle"
	@echo "make bench-study     a Ray Tune study: supervised / hinton / fitnet at label noise 0 and 0.4, 2 seeds, the"
	@echo "                     summary over seeds, docs/bench-study.json/.png (33 min on 2 cores; --quick: minutes)"
	@echo "make bench-crossmodal an image teacher teaches a 2x28 intensity-profile student (Fashion-MNIST pairs): profile"
	@echo "                     alone vs distill over unlabeled pairs vs the loop, 2 seeds, docs/bench-crossmodal.json/.png"
	@echo "                     (python -m bench.crossmodal --quick: minutes)"

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
# 2 pytest-xdist workers, a file to a worker (its module fixtures built once); each worker has its own session
# Ray instance. Most of a test's time is waiting on Ray processes, so two at once fill 2 cores better than one
# (tests/conftest.py orders the files with the longest Ray jobs first).
	$(BIN)/pytest -q -m "not slow" -n 2 --dist loadfile --durations=15 tests

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
	$(BIN)/python -m bench.accuracy --seeds 0,1,2

bench-small: install
	$(BIN)/python -m bench.small --fresh

bench-kd: install
	$(BIN)/python -m bench.kd

bench-kd-online: install
	$(BIN)/python -m bench.kd --part online

bench-kd-ensemble: install
	$(BIN)/python -m bench.kd_ensemble

bench-patience: install
	$(BIN)/python -m bench.patience

bench-anomaly: install
	$(BIN)/python -m bench.anomaly

bench-scale: install
	$(BIN)/python -m bench.scale --sizes 100000,1000000,3000000 --student-sizes 100000,1000000

# The bench environment of bench-peers: its own venv, never a dependency of the package. One torch, the
# project's pin (bench/peers/constraints.txt applies to every install, so nothing can pull another).
PEERS_VENV ?= .venv-peers
$(PEERS_VENV)/.installed: bench/peers/requirements.txt bench/peers/constraints.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q --upgrade pip
	$(PEERS_VENV)/bin/pip install -q -c bench/peers/constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PEERS_VENV)/bin/pip install -q -c bench/peers/constraints.txt -r bench/peers/requirements.txt
	$(PEERS_VENV)/bin/python -m bench.peers.check_env
	touch $@

bench-peers: install $(PEERS_VENV)/.installed
	$(BIN)/python -m bench.peers $(CONFIG)

# Only what `make install` / `make bench` rebuild; experiment results live in runs/ and go with clean-runs.
clean:
	rm -rf bench/results .pytest_cache $(VENV) $(PEERS_VENV) *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: bench-study
bench-study: install
	$(BIN)/python -m bench.study

bench-crossmodal: install
	$(BIN)/python -m bench.crossmodal --threads 2

clean-runs:
	@echo "deleting runs/: every run folder's results (models, pseudo-labels, reports) and runs/cache (the converged oracle)"
	rm -rf runs
