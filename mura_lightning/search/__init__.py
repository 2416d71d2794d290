"""Hyperparameter search with Optuna: the search space, one trial as a train run, the study's report."""

from __future__ import annotations

import importlib

from mura_lightning.errors import MuraError

INSTALL_HINT = "pip install 'mura-lightning[search]'"


def require_optuna() -> None:
    """Raise a MuraError saying how to install Optuna and its Lightning callback when either is missing."""
    for module in ("optuna", "optuna_integration"):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise MuraError(f"the search needs {module}, which is not installed: {INSTALL_HINT}") from err
