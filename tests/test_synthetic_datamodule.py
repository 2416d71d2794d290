"""SyntheticMURADataModule (data=synthetic): generation on first use, every subset served."""

from __future__ import annotations

import pytest
from helpers.runs import build_datamodule

from mura_lightning.synthetic import SyntheticDataError
from mura_lightning.synthetic.datamodule import SyntheticMURADataModule

SMALL_TREE = ["data.synthetic.studies_per_part=4", "+data.synthetic.min_side=64", "+data.synthetic.max_side=96"]


def make_datamodule(root, *overrides: str):
    return build_datamodule(root, "data=synthetic", *overrides)


def test_synthetic_data_needs_a_root_named_like_the_dataset(tmp_path):
    datamodule = make_datamodule(tmp_path / "elsewhere", *SMALL_TREE)
    with pytest.raises(SyntheticDataError, match="must end in MURA-v1.1"):
        datamodule.prepare_data()
    assert list(tmp_path.iterdir()) == []


def test_synthetic_data_is_generated_on_first_use(tmp_path):
    root = tmp_path / "synthetic-MURA" / "MURA-v1.1"
    datamodule = make_datamodule(root, *SMALL_TREE, "data.synthetic.seed=1", "+data.synthetic.num_workers=1")
    assert isinstance(datamodule, SyntheticMURADataModule)
    datamodule.prepare_data()
    assert (root / "train_image_paths.csv").is_file() and (tmp_path / "synthetic-MURA" / "lesions.csv").is_file()
    stamp = (root / "train_image_paths.csv").stat().st_mtime_ns
    datamodule.prepare_data()
    assert (root / "train_image_paths.csv").stat().st_mtime_ns == stamp
    datamodule.setup()
    assert len(datamodule.datasets["train"]) > 0


def test_a_small_set_serves_every_subset_for_one_body_part(tmp_path):
    """studies_per_part=12 with seed 1 once left wrist without valid studies, so its test subset was empty."""
    root = tmp_path / "synthetic-MURA" / "MURA-v1.1"
    size = ["data.synthetic.studies_per_part=12", "data.synthetic.seed=1", "+data.synthetic.max_side=64"]
    datamodule = make_datamodule(root, "bodypart=wrist", "+data.synthetic.min_side=48", *size)
    datamodule.prepare_data()
    datamodule.setup()
    table = datamodule.image_table()
    assert set(table["subset"]) == {"train", "val", "test"}
    assert set(table.loc[table["subset"] == "test", "label"]) == {0, 1}
