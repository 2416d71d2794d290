"""Patient-level train/val split, stratification, reproducibility and class counts."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers.mura_trees import standard_studies, write_tree

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


def labels_by_part(frame: pd.DataFrame, subsets: pd.Series, subset: str) -> dict[str, set[int]]:
    """The study labels each body part has in one subset."""
    rows = frame[subsets == subset]
    return {part: set(group["label"]) for part, group in rows.groupby("body_part")}


def test_a_tiny_fraction_still_puts_both_labels_of_every_part_into_val(big_frame):
    subsets = assign_subsets(big_frame, 0.001, seed=0)
    assert labels_by_part(big_frame, subsets, "val") == {part: {0, 1} for part in ("elbow", "hand", "wrist")}
    assert labels_by_part(big_frame, subsets, "train") == {part: {0, 1} for part in ("elbow", "hand", "wrist")}


def train_frame(patients: int) -> pd.DataFrame:
    """Index-like rows: `patients` training patients with one wrist study each, labels alternating, and one
    valid study."""
    rows = [
        {"split": "train", "patient": f"p{i}", "study": f"s{i}", "body_part": "wrist", "label": i % 2}
        for i in range(patients)
    ]
    rows.append({"split": "valid", "patient": "v", "study": "v", "body_part": "wrist", "label": 0})
    return pd.DataFrame(rows)


def test_a_split_leaving_val_empty_is_an_error():
    with pytest.raises(MuraDataError, match="data.val_fraction=0.2 over 1 training patients leaves the train or val"):
        assign_subsets(train_frame(1), 0.2, seed=0)


def fold_subsets(frame: pd.DataFrame, num_folds: int, seed: int = 0) -> list[pd.Series]:
    return [assign_subsets(frame, 0.1, seed, num_folds=num_folds, fold=fold) for fold in range(num_folds)]


def test_folds_are_disjoint_by_patient_and_cover_every_training_patient(big_frame):
    train = big_frame["split"] == "train"
    folds = fold_subsets(big_frame, 5)
    val_patients = [set(big_frame.loc[subsets == "val", "patient"]) for subsets in folds]
    assert sum(len(patients) for patients in val_patients) == len(set().union(*val_patients))
    assert set().union(*val_patients) == set(big_frame.loc[train, "patient"])
    for subsets, patients in zip(folds, val_patients, strict=True):
        assert (subsets[~train] == "test").all()
        assert set(big_frame.loc[subsets == "train", "patient"]).isdisjoint(patients)
        assert (subsets.groupby(big_frame["patient"]).nunique() == 1).all()


def test_each_stratum_is_spread_over_the_folds_within_one_patient(big_frame):
    train = big_frame[big_frame["split"] == "train"]
    fold_of = {}
    for fold, subsets in enumerate(fold_subsets(big_frame, 4, seed=5)):
        fold_of.update(dict.fromkeys(big_frame.loc[subsets == "val", "patient"], fold))
    studies = train.drop_duplicates("study")
    majority = studies.groupby(["patient", "body_part", "label"]).size().rename("n").reset_index()
    majority = majority.sort_values(["patient", "n", "body_part", "label"], ascending=[True, False, True, True])
    patients = majority.drop_duplicates("patient").assign(fold=lambda t: t["patient"].map(fold_of))
    for _, group in patients.groupby(["body_part", "label"]):
        sizes = group["fold"].value_counts().reindex(range(4), fill_value=0)
        assert sizes.max() - sizes.min() <= 1, sizes.to_dict()
    for subsets in fold_subsets(big_frame, 4, seed=5):
        assert labels_by_part(big_frame, subsets, "val") == {part: {0, 1} for part in ("elbow", "hand", "wrist")}


def test_folds_are_reproducible_by_seed(big_frame):
    first = fold_subsets(big_frame, 3, seed=1)
    for a, b in zip(first, fold_subsets(big_frame, 3, seed=1), strict=True):
        pd.testing.assert_series_equal(a, b)
    assert not first[0].equals(fold_subsets(big_frame, 3, seed=2)[0])


@pytest.mark.parametrize(
    ("num_folds", "fold", "message"),
    [
        (1, 0, "data.num_folds=1: cross-validation needs at least 2 folds"),
        (5, 5, "data.fold=5 is not a fold of data.num_folds=5: use 0 to 4"),
        (5, -1, "data.fold=-1 is not a fold of data.num_folds=5: use 0 to 4"),
        (None, 2, "data.num_folds=None with data.fold=2: cross-validation needs both"),
        (3, None, "data.num_folds=3 with data.fold=None: cross-validation needs both"),
    ],
)
def test_bad_fold_settings_are_errors(big_frame, num_folds, fold, message):
    with pytest.raises(MuraDataError, match=message.replace("(", r"\(")):
        assign_subsets(big_frame, 0.1, seed=0, num_folds=num_folds, fold=fold)


def two_part_frame(wrist_patients: int, shoulder_patients: int) -> pd.DataFrame:
    """`train_frame`'s wrist patients beside shoulder patients of one study each, labels alternating."""
    shoulder = [
        {"split": "train", "patient": f"q{i}", "study": f"t{i}", "body_part": "shoulder", "label": i % 2}
        for i in range(shoulder_patients)
    ]
    return pd.concat([train_frame(wrist_patients), pd.DataFrame(shoulder)], ignore_index=True)


@pytest.mark.parametrize(
    ("frame", "num_folds", "advice"),
    [
        (
            train_frame(7),
            4,
            [
                "data.num_folds=4 needs 4 training patients in each body part and label, so that each fold holds "
                "them all; wrist/1 (body part/label) has 3. What would work: data.num_folds=3 (or fewer, down to 2); "
                "or a tree with at least 4 training patients of each label in each body part (more studies per body "
                "part; data.synthetic.studies_per_part=N for a synthetic one)"
            ],
        ),
        (
            two_part_frame(8, 2),
            3,
            [
                "shoulder/0 (body part/label) has 1. What would work: a tree with at least 3",
                "; or fewer body parts: bodypart=[wrist] leaves out shoulder",
            ],
        ),
        (two_part_frame(8, 4), 3, ["has 2. What would work: data.num_folds=2; or a tree", "leaves out shoulder"]),
    ],
)
def test_more_folds_than_the_smallest_stratum_has_patients_says_what_would_work(frame, num_folds, advice):
    """It once said "use at most 1 folds" where no K >= 2 works."""
    with pytest.raises(MuraDataError) as raised:
        assign_subsets(frame, 0.1, seed=0, num_folds=num_folds, fold=0)
    for part in advice:
        assert part in str(raised.value)
    assert "data.num_folds=1" not in str(raised.value)
    if len(advice) == 1:
        assert "fewer body parts" not in str(raised.value)


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
