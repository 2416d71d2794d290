"""Building objects from the Hydra config."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from mura_lightning.errors import MuraError


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, but a MuraError raised by the target comes out as itself, not wrapped in
    Hydra's InstantiationException, so entry points can show it as a one-line message."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, MuraError):
            raise err.__cause__ from None
        raise


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that maps names to configs (callbacks, loggers)."""
    return [instantiate(entry) for entry in (group or {}).values() if entry is not None]
