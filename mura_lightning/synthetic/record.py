"""The record of the settings a synthetic tree was generated with, kept in the tree, and the check that a tree
about to be reused is the one asked for."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mura_lightning.synthetic.spec import SyntheticDataError, SyntheticSpec

log = logging.getLogger(__name__)

SETTINGS_FILE = "synthetic_settings.json"  # in the MURA-v1.1 folder, so it is renamed into place with the tree
UNRECORDED = ("root", "num_workers")  # settings the files do not depend on


def recorded_settings(spec: SyntheticSpec) -> dict[str, Any]:
    """Every setting the tree's files depend on (all but UNRECORDED), as plain JSON values."""
    values = OmegaConf.to_container(OmegaConf.structured(spec))
    return {name: value for name, value in values.items() if name not in UNRECORDED}


def write_settings(tree: Path, spec: SyntheticSpec) -> None:
    """Record `spec` in the (not yet renamed) MURA-v1.1 folder `tree`."""
    (tree / SETTINGS_FILE).write_text(json.dumps(recorded_settings(spec), indent=2, sort_keys=True) + "\n")


def read_settings(tree: Path) -> dict[str, Any] | None:
    """The settings recorded in a MURA-v1.1 folder, or None for a tree without a record."""
    path = tree / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def setting_differences(recorded: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """`name X there, Y asked` for each setting whose recorded value is not the asked one."""
    names = [*asked, *(name for name in recorded if name not in asked)]
    return [
        f"{name} {recorded.get(name, 'unset')} there, {asked.get(name, 'unset')} asked"
        for name in names
        if recorded.get(name) != asked.get(name)
    ]


def check_reused_tree(tree: Path, spec: SyntheticSpec) -> None:
    """Refuse to reuse the MURA-v1.1 folder `tree` when it was generated with other settings than `spec`,
    naming the differences and the ways out; warn when it holds no record of its settings (written before the
    record was kept, or not synthetic at all) and is used as it is."""
    recorded = read_settings(tree)
    if recorded is None:
        log.warning(
            "%s has no record of the settings it was generated with (%s: a tree from an older version, or not a "
            "synthetic one); it is used as it is, whatever data.synthetic says",
            tree,
            SETTINGS_FILE,
        )
        return
    differences = setting_differences(recorded, recorded_settings(spec))
    if differences:
        raise SyntheticDataError(
            f"{tree} was generated with other settings than data.synthetic asks: {'; '.join(differences)}. "
            f"Delete {tree} and the lesions.csv beside it to regenerate it, or give data.root another folder "
            f"ending in {tree.name} to keep both (the image cache needs no deleting: it is keyed by the files)"
        )
