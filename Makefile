# One-command set-up: `make demo` runs the sample through the pipeline, `make test` runs the tests.
# Both create .venv and install the project into it on first use: `make demo` the runtime only,
# `make test` (and the other developer targets) the dev extras as well.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Where torch and torchvision come from, e.g. https://download.pytorch.org/whl/cpu for the CPU-only
# wheels (without the 4.6 GB of CUDA libraries PyPI's build brings). Empty: pip's own index.
TORCH_INDEX_URL ?=
TORCH_PINS = $(shell $(PYTHON) -c "import tomllib; print(' '.join(d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if d.startswith(('torch==', 'torchvision=='))))")

.PHONY: demo test test-fast test-parallel lint faults soak bench pretrain corpus cluster system-deps device-bundle device-check compose-test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX_URL),$(BIN)/pip install --quiet --index-url $(TORCH_INDEX_URL) $(TORCH_PINS))
	$(BIN)/pip install --quiet -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/producer enqueue dataset/

system-deps:
	bash scripts/install-system-deps.sh

test: lint system-deps
	$(BIN)/pytest -q

# Lint and types (CI runs them through `make test`): ruff with the configured rules, the formatter on
# the files it holds (pyproject.toml [tool.ruff.format]), mypy on workers and producer, the layers.
lint: $(BIN)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy workers producer
	$(BIN)/lint-imports

# A developer's loop: the unit tests (no servers, no worker processes) under a few seconds each,
# spread over the cores. `make test` (CI) runs everything.
test-fast: $(BIN)/.installed-dev
	$(BIN)/pytest -q -n auto -m "not integration and not slow"

# Everything `make test` runs, sooner: the tests spread over pytest-xdist processes (each starts its
# own redis-server and weed), the fault scenarios all in one of them, one at a time (tests/conftest.py).
test-parallel: lint system-deps
	$(BIN)/pytest -q -n auto --dist loadgroup

# Fault-injection scenarios alone (they are also part of `make test`).
faults: $(BIN)/.installed-dev system-deps
	$(BIN)/pytest -q -m faults

# Long load run: 2,000 tiny images through real workers (SOAK_IMAGES to change); not in `make test`.
soak: $(BIN)/.installed-dev system-deps
	$(BIN)/pytest -q -s -m soak tests/test_soak.py

# Benchmark tables on stdout (benchmarks/README.md); these sizes finish in minutes on 2 cores.
bench: $(BIN)/.installed-dev
	$(BIN)/python -m benchmarks.throughput --size 64x40 --count 4
	$(BIN)/python -m benchmarks.quality --dataset dataset

# What the GPU check needs on a bare machine with no internet (wheels + offline weights), in .device-bundle/.
device-bundle: $(BIN)/.installed-dev
	PYTHON=$(BIN)/python bash scripts/device-bundle

# The gpu tests and the GPU benchmarks in one table (at most ~8 minutes on one card): docs/device-check.md.
device-check:
	python3 scripts/device-check

# The distributed system on this machine, no Docker: Redis, S3 (SeaweedFS), a CPU and a GPU-queue
# worker and Flower on 127.0.0.1; writes cluster.env for the producer; Ctrl-C stops it all.
cluster: $(BIN)/.installed-dev system-deps
	$(BIN)/python -m testbed.cluster

# The deployment built and run for real: images, the compose stack, a run across containers, a scaled
# pool and a killed worker (docs/deploy.md; about 8 minutes once the images are built). Needs a Docker
# daemon: apt-get install -y docker.io docker-compose debootstrap && dockerd &
compose-test:
	python3 scripts/compose-test

# The photo corpus (about 270 public photos, cached outside git) and the shipped model made from it.
corpus: $(BIN)/.installed
	$(BIN)/python scripts/fetch-photo-corpus

# Reproduces models/lowlight-compact.* from scratch (2.5 h on 2 cores; PRETRAIN_MINUTES to change);
# PRETRAIN_ARCH=unet-16 (workers/ops/architectures.py) pretrains another architecture from a random start.
# Interrupted, the same command resumes.
pretrain: $(BIN)/.installed
	bash scripts/pretrain

clean:
	rm -rf runs .pytest_cache test-artifacts .device-bundle
