"""SyntheticMURADataModule: MURADataModule on synthetic MURA, generated on first use."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mura_lightning.data.datamodule import MURADataModule
from mura_lightning.synthetic.plan import DATASET_DIR
from mura_lightning.synthetic.record import check_reused_tree
from mura_lightning.synthetic.spec import SyntheticDataError, load_spec
from mura_lightning.synthetic.write import generate_synthetic_mura

log = logging.getLogger(__name__)


class SyntheticMURADataModule(MURADataModule):
    """MURADataModule whose `prepare_data` first writes synthetic MURA at `root` when it is not there yet, and
    reuses a tree that is there only when it was generated with the same settings.

    `synthetic` holds the generator's settings (studies_per_part, seed and any knob of
    mura_lightning/synthetic/defaults.yaml); the other arguments are MURADataModule's. `root` must end in
    MURA-v1.1: the generator writes that folder, with lesions.csv beside it.
    """

    def __init__(self, synthetic: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.synthetic = dict(synthetic)

    def prepare_data(self) -> None:
        """Generate the tree at `root` unless it exists (an existing one must have been generated with the
        settings asked, see `check_reused_tree`), then prepare as MURADataModule does."""
        if self.root.exists():
            check_reused_tree(self.root, load_spec(root=str(self.root.parent), **self.synthetic))
        elif self.root.name != DATASET_DIR:
            raise SyntheticDataError(
                f"data.root={self.root} must end in {DATASET_DIR} to generate synthetic MURA there; "
                f"point it at a folder named {DATASET_DIR} (its parent receives lesions.csv too)"
            )
        else:
            log.info("generating synthetic MURA at %s", self.root)
            generate_synthetic_mura(self.root.parent, **self.synthetic)
        super().prepare_data()
