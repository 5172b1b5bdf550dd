# One-command set-up: `make demo` runs the sample through the pipeline, `make test` runs the tests.
# Both create .venv and install the project into it on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# Offline machines: use the shared stand-in for the default Hub model when it is there.
# With internet, `make demo WEIGHTS=` downloads danhtran2mind/Real-ESRGAN-Anime-finetuning instead.
WEIGHTS ?= $(firstword $(wildcard ../shared/weights/RealESRGAN_x4plus.pth))
export WEIGHTS

.PHONY: demo test test-fast faults soak bench pretrain corpus system-deps device-bundle device-check clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/producer enqueue dataset/

system-deps:
	bash scripts/install-system-deps.sh

test: $(BIN)/.installed system-deps
	$(BIN)/lint-imports
	$(BIN)/pytest -q

# Unit tests only: no servers, no worker processes.
test-fast: $(BIN)/.installed
	$(BIN)/pytest -q -m "not integration"

# Fault-injection scenarios alone (they are also part of `make test`).
faults: $(BIN)/.installed system-deps
	$(BIN)/pytest -q -m faults

# Long load run: 2,000 tiny images through real workers (SOAK_IMAGES to change); not in `make test`.
soak: $(BIN)/.installed system-deps
	$(BIN)/pytest -q -s -m soak tests/test_soak.py

# Benchmark tables on stdout (benchmarks/README.md); these sizes finish in minutes on 2 cores.
bench: $(BIN)/.installed
	$(BIN)/python benchmarks/throughput.py --size 64x40 --count 4
	$(BIN)/python benchmarks/quality.py --dataset dataset

# What the GPU check needs on a bare machine with no internet (wheels + offline weights), in .device-bundle/.
device-bundle: $(BIN)/.installed
	PYTHON=$(BIN)/python bash scripts/device-bundle

# The gpu tests and the GPU benchmarks in one table (at most ~8 minutes on one card): README "Device check".
device-check:
	python3 scripts/device-check

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
