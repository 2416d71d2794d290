# mura-lightning: `make demo` and `make test` install into .venv first when needed.
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_ARGS ?=

.PHONY: install test demo lint format tensorboard clean

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
