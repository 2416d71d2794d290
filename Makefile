# mura-lightning: `make demo` and `make test` install into .venv first when needed.
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_ARGS ?=
# GPU check (benchmarks/gpu_check.sh): wheels for the GPU machine, which has Python 3.12 and no network.
SHARED_WHEELS ?= ../shared/gpu-wheels
GPU_WHEELS := gpu-wheels
GPU_EXTRA_WHEELS := pytest pluggy iniconfig rich markdown-it-py mdurl pygments seaborn
GPU_PYTHON ?= python3
GPU_CHECK_OUT ?= outputs/gpu_check

.PHONY: install test demo lint format tensorboard clean gpu-wheels gpu-check

install: $(INSTALLED)

# Re-installs when .venv is missing or pyproject.toml is newer than the last install.
$(INSTALLED): pyproject.toml
	test -x $(PYTHON) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PYTHON) -m pip install $(TORCH_PINS)
	$(PYTHON) -m pip install -e '.[dev]' $(TORCH_PINS)
	touch $(INSTALLED)

test: $(INSTALLED)
	$(PYTHON) -m pytest

# Generates synthetic MURA into data/ on first use, trains DenseNet-169 from scratch on the CPU, tests it.
demo: $(INSTALLED)
	$(PYTHON) -m mura_lightning.train experiment=demo $(DEMO_ARGS)

lint: $(INSTALLED)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: $(INSTALLED)
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

tensorboard: $(INSTALLED)
	$(VENV)/bin/tensorboard --logdir outputs

# Removes runs, generated data and caches; keeps .venv (delete it by hand to reinstall from scratch).
clean:
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf data/synthetic-MURA .pytest_cache .ruff_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +

# Fills gpu-wheels/ (git-ignored; carried to the GPU machine): the shared wheels plus pure-Python ones its tests
# need in case that machine lacks them. gpu_check.sh installs from it only what does not import there.
gpu-wheels: $(INSTALLED)
	mkdir -p $(GPU_WHEELS)
	cp $(SHARED_WHEELS)/*.whl $(GPU_WHEELS)/
	$(PYTHON) -m pip download --only-binary=:all: --python-version 3.12 --no-deps -d $(GPU_WHEELS) $(GPU_EXTRA_WHEELS)

# On a GPU machine, from the repo root (no install: it uses $(GPU_PYTHON) and gpu-wheels/).
gpu-check:
	PYTHON=$(GPU_PYTHON) bash benchmarks/gpu_check.sh $(GPU_CHECK_OUT)
