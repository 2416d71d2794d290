"""MURADataModule built by Hydra: subsets, batches, class counts, the sampler and bad images."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers.runs import build_datamodule

from mura_lightning.data.datamodule import MURADataModule
from mura_lightning.data.images import ImageDecodeError
from mura_lightning.data.index import BODY_PARTS, MuraDataError


def make_datamodule(root, *overrides: str) -> MURADataModule:
    return build_datamodule(root, *overrides)


def test_hydra_builds_the_datamodule_for_the_chosen_parts(mura_root):
    datamodule = make_datamodule(mura_root, "bodypart=wrist")
    assert isinstance(datamodule, MURADataModule)
    assert datamodule.body_parts == ["wrist"]
    assert make_datamodule(mura_root, "bodypart=[wrist,shoulder]").body_parts == ["shoulder", "wrist"]
    assert make_datamodule(mura_root, "bodypart=all").body_parts == list(BODY_PARTS)


def test_subsets_cover_the_selection_without_patient_leakage(mura_root):
    datamodule = make_datamodule(mura_root, "bodypart=all", "data.val_fraction=0.3")
    datamodule.setup()
    table = datamodule.image_table()
    assert set(table["subset"]) == {"train", "val", "test"}
    assert (table.groupby("patient")["subset"].nunique() == 1).all()
    assert sum(len(d) for d in datamodule.datasets.values()) == len(table)


def test_a_batch_holds_images_labels_studies_and_parts(mura_root):
    datamodule = make_datamodule(mura_root, "bodypart=shoulder")
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    assert set(batch) == {"image", "label", "study", "body_part", "image_id"}
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.float32
    assert (batch["body_part"] == BODY_PARTS.index("shoulder")).all()
    table = datamodule.image_table().set_index("image_id")
    for image_id, study, label in zip(batch["image_id"], batch["study"], batch["label"], strict=True):
        row = table.loc[int(image_id)]
        assert row["study_id"] == int(study) and row["label"] == int(label)
        assert datamodule.study_names()[int(study)] == row["study"]


def test_single_channel_models_get_single_channel_batches(mura_root):
    datamodule = make_datamodule(mura_root, "model.preprocessing.in_chans=1")
    datamodule.setup()
    assert next(iter(datamodule.val_dataloader()))["image"].shape[1] == 1


def test_class_counts_are_taken_on_the_train_subset(mura_root):
    datamodule = make_datamodule(mura_root)
    datamodule.setup()
    table = datamodule.image_table()
    train = table[table["subset"] == "train"]
    counts = datamodule.class_counts
    assert counts["images_abnormal"].sum() == (train["label"] == 1).sum()
    assert counts["images_normal"].sum() == (train["label"] == 0).sum()


def test_balanced_sampler_draws_both_classes_equally_often(tmp_path):
    from helpers.mura_trees import Study, write_tree

    studies = [Study("train", "hand", p, 1, label=int(p % 5 == 0), images=1) for p in range(1, 101)]
    studies.append(Study("valid", "hand", 200, 1, 0))
    root = write_tree(tmp_path, studies)
    datamodule = make_datamodule(root, "data.balanced_sampler=true", "data.batch_size=50")
    datamodule.setup()
    labels = torch.cat([batch["label"] for _ in range(10) for batch in datamodule.train_dataloader()])
    assert datamodule.class_counts["images_abnormal"].sum() < datamodule.class_counts["images_normal"].sum() / 2
    assert 0.4 < labels.mean().item() < 0.6


def corrupt_first_val_image(datamodule):
    path = datamodule.datasets["val"].paths[0]
    with open(path, "wb") as handle:
        handle.write(b"broken")
    return path


def test_corrupt_image_is_an_error_naming_it(mura_root):
    datamodule = make_datamodule(mura_root)
    datamodule.setup()
    path = corrupt_first_val_image(datamodule)
    with pytest.raises(ImageDecodeError, match=path):
        next(iter(datamodule.val_dataloader()))


def test_corrupt_image_is_dropped_once_with_a_warning_under_skip(mura_root, caplog):
    datamodule = make_datamodule(mura_root, "data.on_error=skip")
    datamodule.setup()
    path = corrupt_first_val_image(datamodule)
    with caplog.at_level(logging.WARNING):
        seen = [sum(len(batch["label"]) for batch in datamodule.val_dataloader()) for _ in range(2)]
    assert seen == [len(datamodule.datasets["val"]) - 1] * 2
    assert len([record for record in caplog.records if path in record.getMessage()]) == 1
    assert datamodule.datasets["val"].skipped == {path}


def test_empty_subset_is_an_error(tmp_path):
    from helpers.mura_trees import Study, write_tree

    root = write_tree(tmp_path, [Study("train", "hand", p, 1, p % 2) for p in range(1, 9)])
    with pytest.raises(MuraDataError, match="the test subset of hand .* is empty"):
        make_datamodule(root, "bodypart=hand", "data.val_fraction=0.3").setup()


def test_the_fold_settings_choose_val(mura_root):
    val_patients = []
    for fold in (0, 1):
        datamodule = make_datamodule(mura_root, "bodypart=all", "data.num_folds=2", f"data.fold={fold}")
        datamodule.setup()
        table = datamodule.image_table()
        val_patients.append(set(table.loc[table["subset"] == "val", "patient"]))
        training = set(table.loc[table["subset"] != "test", "patient"])
    assert val_patients[0].isdisjoint(val_patients[1])
    assert val_patients[0] | val_patients[1] == training
