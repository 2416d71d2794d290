"""A package's public API, named in its `__init__.py` and imported on first use (PEP 562), so that importing one
module of a package does not import all of them, and the packages' modules can import each other freely."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """`__all__`, `__getattr__` and `__dir__` for `package`, whose public names live in the modules `exports` maps
    them from (module name relative to the package -> names).

    Example:
        In `mura_lightning/inference/__init__.py`:
        `__all__, __getattr__, __dir__ = lazy_exports(__name__, {"model": ["InferenceModel"]})`; then
        `from mura_lightning.inference import InferenceModel` imports `mura_lightning.inference.model`.
    """
    home = {name: module for module, names in exports.items() for name in names}
    public = sorted(home)

    def getattr_(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{home[name]}"), name)

    def dir_() -> list[str]:
        return public

    return public, getattr_, dir_
