"""Patient-level train/val split, stratification, reproducibility and class counts."""

from __future__ import annotations

import pandas as pd
import pytest
from mura_trees import standard_studies, write_tree

from mura_lightning.data.index import MuraDataError, build_index
from mura_lightning.data.splits import assign_subsets, class_counts


@pytest.fixture
def big_frame(tmp_path):
    """A tree with enough patients for split statistics (several with studies in two body parts)."""
    studies = standard_studies(parts=("elbow", "hand", "wrist"), patients_per_part=40, valid_patients_per_part=5)
    return build_index(write_tree(tmp_path, studies)).frame


def test_no_patient_is_in_two_subsets(big_frame):
    subsets = assign_subsets(big_frame, val_fraction=0.2, seed=3)
    per_patient = subsets.groupby(big_frame["patient"]).nunique()
    assert (per_patient == 1).all()
    assert set(subsets) == {"train", "val", "test"}
    assert (subsets[big_frame["split"] == "valid"] == "test").all()
    assert (subsets[big_frame["split"] == "train"] != "test").all()


def test_split_is_reproducible_by_seed(big_frame):
    first = assign_subsets(big_frame, 0.2, seed=7)
    pd.testing.assert_series_equal(first, assign_subsets(big_frame, 0.2, seed=7))
    assert not first.equals(assign_subsets(big_frame, 0.2, seed=8))


def test_val_share_of_patients_follows_the_fraction_in_every_stratum(big_frame):
    train = big_frame[big_frame["split"] == "train"]
    subsets = assign_subsets(big_frame, 0.25, seed=0)[train.index]
    patients = train.assign(subset=subsets).drop_duplicates("patient")
    share = (patients["subset"] == "val").mean()
    assert abs(share - 0.25) <= 1 / len(patients)
    first_study = train.drop_duplicates("patient").set_index("patient")[["body_part", "label"]]
    strata = patients.set_index("patient").join(first_study, rsuffix="_first")
    for _, group in strata.groupby(["body_part_first", "label_first"]):
        assert abs((group["subset"] == "val").sum() - 0.25 * len(group)) <= 2


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_outside_zero_one_is_an_error(big_frame, fraction):
    with pytest.raises(MuraDataError, match=f"data.val_fraction={fraction} must lie strictly between 0 and 1"):
        assign_subsets(big_frame, fraction, seed=0)


def test_fraction_leaving_val_empty_is_an_error(big_frame):
    with pytest.raises(MuraDataError, match="leaves the train or val subset empty"):
        assign_subsets(big_frame, 0.001, seed=0)


def test_class_counts_match_a_hand_count(big_frame):
    counts = class_counts(big_frame)
    for part, row in counts.iterrows():
        rows = big_frame[big_frame["body_part"] == part]
        studies = rows.drop_duplicates("study")
        assert row["images_normal"] == (rows["label"] == 0).sum()
        assert row["images_abnormal"] == (rows["label"] == 1).sum()
        assert row["studies_normal"] == (studies["label"] == 0).sum()
        assert row["studies_abnormal"] == (studies["label"] == 1).sum()
    assert list(counts.index) == ["elbow", "hand", "wrist"]


def test_class_counts_fill_a_missing_class_with_zero(big_frame):
    normal_only = big_frame[big_frame["label"] == 0]
    counts = class_counts(normal_only)
    assert (counts["images_abnormal"] == 0).all() and (counts["studies_abnormal"] == 0).all()
