"""Each package names its public API in `__all__` (imported on first use): every name resolves to an object
defined in that package, and a name it does not export is an AttributeError."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "mura_lightning.callbacks",
    "mura_lightning.cluster",
    "mura_lightning.data",
    "mura_lightning.evaluation",
    "mura_lightning.inference",
    "mura_lightning.models",
    "mura_lightning.reporting",
    "mura_lightning.synthetic",
    "mura_lightning.tracking",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_comes_from_the_package(package):
    module = importlib.import_module(package)
    assert module.__all__, f"{package} names no public API"
    for name in module.__all__:
        value = getattr(module, name)
        home = getattr(value, "__module__", None)
        assert home is None or home.startswith(package), f"{package}.{name} comes from {home}"
    namespace: dict = {}
    exec(f"from {package} import *", namespace)
    assert set(module.__all__) <= set(namespace)


@pytest.mark.parametrize("package", PACKAGES)
def test_a_name_the_package_does_not_export_is_an_attribute_error(package):
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        _ = importlib.import_module(package).no_such_name
