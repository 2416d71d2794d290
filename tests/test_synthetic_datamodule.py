"""SyntheticMURADataModule (data=synthetic): generation on first use, and evaluation of what it trained."""

from __future__ import annotations

from types import SimpleNamespace

import hydra
import pytest
from conftest import compose

from mura_lightning import evaluate
from mura_lightning.data.datamodule import MURADataModule
from mura_lightning.synthetic import SyntheticDataError
from mura_lightning.synthetic.datamodule import SyntheticMURADataModule

TINY = ["data.image_size=32", "data.batch_size=4", "data.num_workers=0"]
SMALL_TREE = ["data.synthetic.studies_per_part=4", "+data.synthetic.min_side=64", "+data.synthetic.max_side=96"]


def make_datamodule(root, *overrides: str):
    cfg = compose("inspect", [f"data.root={root}", "data=synthetic", *TINY, *overrides])
    return hydra.utils.instantiate(cfg.data)


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


def test_evaluation_rebuilds_a_synthetic_run_as_the_plain_datamodule(tmp_path, monkeypatch):
    root = tmp_path / "synthetic-MURA" / "MURA-v1.1"
    settings = dict(make_datamodule(root, *SMALL_TREE).hparams)  # what a checkpoint saves
    assert settings["synthetic"]["studies_per_part"] == 4 and settings["root"] == str(root)
    monkeypatch.setattr(evaluate, "datamodule_settings", lambda path: dict(settings))
    model = SimpleNamespace(
        hparams={"preprocessing": {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}, "backbone": {"in_chans": 3}}
    )
    datamodule = evaluate.datamodule_for("unused.ckpt", model, compose("evaluate", ["ckpt_path=unused.ckpt"]))
    assert type(datamodule) is MURADataModule and datamodule.root == root
    assert "synthetic" not in datamodule.hparams
