"""The MURA index: CSV and folder sources, skipped files, and every bad input's clear error."""

from __future__ import annotations

import logging
import shutil

import pandas as pd
import pytest
from helpers.mura_trees import DATASET, Study, append_csv, write_csv, write_image, write_tree

from mura_lightning.data.index import (
    BODY_PARTS,
    COLUMNS,
    MuraDataError,
    build_index,
    resolve_body_parts,
    select_body_parts,
)


def remove_csvs(root):
    for csv in root.glob("*.csv"):
        csv.unlink()


def test_csv_index_has_one_row_per_image(mura_root, studies):
    index = build_index(mura_root)
    frame = index.frame
    assert list(frame.columns) == COLUMNS
    assert index.source == {"train": "csv", "valid": "csv"}
    assert len(frame) == sum(s.images for s in studies)
    assert frame["study"].nunique() == len(studies)
    by_study = frame.drop_duplicates("study").set_index("study")["label"]
    for study in studies:
        assert by_study[study.folder] == study.label
    first = studies[0]
    row = frame[frame["study"] == first.folder].iloc[0]
    assert row["path"] == str(mura_root / first.image_paths()[0])
    assert (row["split"], row["body_part"], row["patient"], row["view"]) == ("train", first.part, "patient00001", 1)


@pytest.mark.parametrize("use_csvs", [True, False])
def test_body_part_folders_of_any_case_keep_their_labels_and_spelling(tmp_path, use_csvs):
    root = write_tree(
        tmp_path, [Study("train", "hand", 1, 1, label=1), Study("valid", "hand", 2, 1, label=0)], use_csvs
    )
    for split in ("train", "valid"):
        (root / split / "XR_HAND").rename(root / split / "XR_Hand")
        for csv in root.glob(f"{split}_*.csv"):
            csv.write_text(csv.read_text().replace("XR_HAND", "XR_Hand"))
    frame = build_index(root).frame
    assert list(frame["label"]) == [1, 1, 0, 0] and set(frame["body_part"]) == {"hand"}
    assert all((root / study).is_dir() for study in frame["study"]), "study paths as spelled on disk"
    assert frame["study"].iloc[0] == "train/XR_Hand/patient00001/study1_positive"


def test_the_valid_split_can_be_indexed_alone(mura_root):
    shutil.rmtree(mura_root / "train")
    index = build_index(mura_root, splits=("valid",))
    assert set(index.frame["split"]) == {"valid"} and index.source == {"valid": "csv"}
    with pytest.raises(MuraDataError, match="split 'test' is not one of MURA's: train, valid"):
        build_index(mura_root, splits=("test",))


def test_folder_index_agrees_with_csv_index(mura_root):
    from_csv = build_index(mura_root).frame
    remove_csvs(mura_root)
    index = build_index(mura_root)
    assert index.source == {"train": "folders", "valid": "folders"}
    pd.testing.assert_frame_equal(index.frame, from_csv)


@pytest.mark.parametrize("use_csvs", [True, False])
def test_non_images_are_skipped_and_counted(tmp_path, studies, use_csvs):
    root = write_tree(tmp_path, studies, csvs=use_csvs)
    study = studies[0]
    junk = [f"{study.folder}/._image1.png", f"{study.folder}/.DS_Store", f"{study.folder}/notes.txt"]
    for rel in junk:
        (root / rel).write_bytes(b"\x00\x05\x16\x07")
    if use_csvs:
        append_csv(root / "train_image_paths.csv", [f"{DATASET}/{rel}" for rel in junk])
    index = build_index(root)
    assert index.skipped["not_an_image"] == 3
    assert len(index.frame) == sum(s.images for s in studies)
    assert not index.frame["path"].str.contains(r"/\._|DS_Store|\.txt").any()


def test_missing_file_is_an_error_naming_it(mura_root):
    missing = [f"{DATASET}/train/XR_WRIST/patient00003/study1_negative/image{n}.png" for n in (7, 8)]
    append_csv(mura_root / "train_image_paths.csv", missing)
    with pytest.raises(MuraDataError, match="2 listed in the CSV but not on disk") as err:
        build_index(mura_root)
    assert "patient00003/study1_negative/image7.png" in str(err.value)
    assert "data.on_error=skip" in str(err.value)


def test_missing_file_is_skipped_with_a_warning(mura_root, studies, caplog):
    missing = f"{DATASET}/train/XR_WRIST/patient00003/study1_negative/image9.png"
    append_csv(mura_root / "train_image_paths.csv", [missing])
    with caplog.at_level(logging.WARNING):
        index = build_index(mura_root, on_error="skip")
    assert index.skipped["missing_file"] == 1
    assert len(index.frame) == sum(s.images for s in studies)
    assert "image9.png" in caplog.text


def test_many_offenders_are_cut_to_the_first_few(mura_root):
    missing = [f"{DATASET}/train/XR_WRIST/patient00003/study1_negative/image{n}.png" for n in range(10, 30)]
    append_csv(mura_root / "train_image_paths.csv", missing)
    with pytest.raises(MuraDataError, match=r"and 15 more") as err:
        build_index(mura_root)
    assert "image29.png" not in str(err.value)


def test_study_without_label_row_is_an_error(tmp_path):
    studies = [Study("train", "hand", 1, 1, 0), Study("train", "hand", 2, 1, 1), Study("valid", "hand", 3, 1, 0)]
    root = write_tree(tmp_path, studies)
    write_csv(root / "train_labeled_studies.csv", [f"{DATASET}/{studies[0].folder}/,0"])
    with pytest.raises(MuraDataError, match="1 study has no label") as err:
        build_index(root)
    assert studies[1].folder in str(err.value)


def test_study_folder_without_label_suffix_is_an_error(mura_root):
    remove_csvs(mura_root)
    write_image(mura_root / "train/XR_HAND/patient09999/study1/image1.png", seed=1)
    with pytest.raises(MuraDataError, match="study has no label") as err:
        build_index(mura_root)
    assert "patient09999/study1" in str(err.value)


def test_label_contradicting_folder_name_is_an_error(tmp_path):
    studies = [Study("train", "elbow", 1, 1, 1), Study("valid", "elbow", 2, 1, 0)]
    root = write_tree(tmp_path, studies)
    write_csv(root / "train_labeled_studies.csv", [f"{DATASET}/{studies[0].folder}/,0"])
    with pytest.raises(MuraDataError, match="label contradicts the study folder name") as err:
        build_index(root)
    assert "study1_positive (CSV says 0)" in str(err.value)


def test_label_other_than_zero_or_one_is_an_error(mura_root):
    append_csv(mura_root / "valid_labeled_studies.csv", [f"{DATASET}/valid/XR_HAND/patient00500/study1_positive/,yes"])
    with pytest.raises(MuraDataError, match="has label 'yes'"):
        build_index(mura_root)


def test_path_outside_the_layout_is_an_error(mura_root):
    knee = f"{DATASET}/train/XR_KNEE/patient00001/study1_positive/image1.png"
    append_csv(mura_root / "train_image_paths.csv", [knee])
    with pytest.raises(MuraDataError, match="does not follow the MURA layout"):
        build_index(mura_root)


def test_one_csv_of_a_pair_missing_is_an_error(mura_root):
    (mura_root / "valid_labeled_studies.csv").unlink()
    with pytest.raises(MuraDataError, match="found .*valid_image_paths.csv but not .*valid_labeled_studies.csv"):
        build_index(mura_root)


def test_missing_root_and_missing_split_are_errors(tmp_path, mura_root):
    with pytest.raises(MuraDataError, match="does not exist. Point data.root at the MURA-v1.1 folder"):
        build_index(tmp_path / "nowhere")
    remove_csvs(mura_root)
    shutil.rmtree(mura_root / "valid")
    with pytest.raises(MuraDataError, match="neither valid_image_paths.csv nor a valid/ folder"):
        build_index(mura_root)


def test_empty_tree_is_an_error(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "valid").mkdir()
    with pytest.raises(MuraDataError, match="no images found"):
        build_index(tmp_path)


def test_bad_on_error_value_is_an_error(mura_root):
    with pytest.raises(MuraDataError, match="data.on_error='ignore' is not one of raise, skip"):
        build_index(mura_root, on_error="ignore")


def test_body_part_selection():
    assert resolve_body_parts("all") == list(BODY_PARTS)
    assert resolve_body_parts("Shoulder") == ["shoulder"]
    assert resolve_body_parts(["wrist", "hand", "wrist"]) == ["hand", "wrist"]
    with pytest.raises(MuraDataError, match="unknown body part.*knee.*elbow, finger, forearm"):
        resolve_body_parts(["knee", "hand"])
    with pytest.raises(MuraDataError, match="unknown body part"):
        resolve_body_parts([])


def test_selecting_parts_keeps_only_their_rows(mura_root):
    frame = build_index(mura_root).frame
    assert set(select_body_parts(frame, "wrist")["body_part"]) == {"wrist"}
    assert len(select_body_parts(frame, "all")) == len(frame)
    with pytest.raises(MuraDataError, match="no images of humerus in the index; it holds: shoulder, wrist"):
        select_body_parts(frame, "humerus")


def test_csv_and_folder_indexes_agree_on_synthetic_mura(tmp_path):
    from mura_lightning.synthetic import generate_synthetic_mura

    root = generate_synthetic_mura(tmp_path, studies_per_part=4, seed=3, min_side=64, max_side=96, num_workers=1)
    from_csv = build_index(root)
    remove_csvs(root)
    from_folders = build_index(root)
    pd.testing.assert_frame_equal(from_folders.frame, from_csv.frame)
    assert set(from_csv.frame["body_part"]) == set(BODY_PARTS)
    assert (from_csv.source, from_folders.source) == (
        {"train": "csv", "valid": "csv"},
        {"train": "folders", "valid": "folders"},
    )
