"""SyntheticMURADataModule (data=synthetic): generation on first use, every subset served."""

from __future__ import annotations

import pytest
from helpers.runs import build_datamodule, run_module

from mura_lightning.synthetic import SyntheticDataError, generate_synthetic_mura
from mura_lightning.synthetic.datamodule import SyntheticMURADataModule
from mura_lightning.synthetic.record import SETTINGS_FILE

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


def test_a_tree_of_other_settings_is_refused_with_the_differences_and_the_ways_out(tmp_path):
    """A changed size once reused the old tree without a word, so a cross-validation ran short of patients."""
    root = tmp_path / "synthetic-MURA" / "MURA-v1.1"
    make_datamodule(root, *SMALL_TREE, "+data.synthetic.num_workers=1").prepare_data()
    bigger = make_datamodule(root, *SMALL_TREE[1:], "data.synthetic.studies_per_part=5", "data.synthetic.seed=3")
    message = (
        rf"{root} was generated with other settings than data.synthetic asks: studies_per_part 4 there, 5 asked; "
        r"seed 0 there, 3 asked\. Delete .* to regenerate it, or give data.root another folder"
    )
    with pytest.raises(SyntheticDataError, match=message):
        bigger.prepare_data()
    same = make_datamodule(root, *SMALL_TREE, "+data.synthetic.num_workers=2")  # workers do not change the files
    same.prepare_data()


def test_a_tree_without_a_record_of_its_settings_is_used_with_a_warning(tmp_path, caplog):
    root = tmp_path / "synthetic-MURA" / "MURA-v1.1"
    make_datamodule(root, *SMALL_TREE, "+data.synthetic.num_workers=1").prepare_data()
    (root / SETTINGS_FILE).unlink()
    stamp = (root / "train_image_paths.csv").stat().st_mtime_ns
    with caplog.at_level("WARNING"):
        make_datamodule(root, *SMALL_TREE[1:], "data.synthetic.studies_per_part=5").prepare_data()
    assert f"{root} has no record of the settings it was generated with" in caplog.text
    assert (root / "train_image_paths.csv").stat().st_mtime_ns == stamp


def test_train_refuses_a_tree_of_other_settings_in_one_line(tmp_path):
    root = tmp_path / "synthetic-MURA" / "MURA-v1.1"
    generate_synthetic_mura(root.parent, studies_per_part=4, seed=0, min_side=48, max_side=64, num_workers=1)
    finished = run_module(
        "mura_lightning.train",
        "data=synthetic",
        f"data.root={root}",
        "data.synthetic.studies_per_part=16",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "model.preprocessing.image_size=32",
        "data.num_workers=0",
        cwd=tmp_path,
        timeout=300,
    )
    assert finished.returncode == 2, finished.stderr
    assert "studies_per_part 4 there, 16 asked" in finished.stderr and "Traceback" not in finished.stderr
