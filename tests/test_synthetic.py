"""The synthetic MURA generator: layout, CSVs, patients, lesions, determinism, leakage, safety and CLI."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from helpers.runs import REPO_ROOT, compose, run_module
from omegaconf import OmegaConf
from PIL import Image
from sklearn.metrics import roc_auc_score

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.synthetic import SyntheticDataError, generate_synthetic_mura, load_spec, write
from mura_lightning.synthetic.plan import plan_studies
from mura_lightning.synthetic.record import SETTINGS_FILE, read_settings, recorded_settings
from mura_lightning.synthetic.render import lesion_flags, render_image
from mura_lightning.synthetic.spec import DEFAULTS_FILE, LESION_KINDS

SMALL = dict(min_side=120, max_side=200, num_workers=1)  # small images keep the tests fast
OFFICIAL_CSVS = (
    "train_image_paths.csv",
    "train_labeled_studies.csv",
    "valid_image_paths.csv",
    "valid_labeled_studies.csv",
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A small synthetic tree: 5 studies per body part."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_mura(root, studies_per_part=5, seed=0, **SMALL)
    return root


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def image_rows(tree: Path) -> list[str]:
    return [row for split in ("train", "valid") for row in read_lines(tree / "MURA-v1.1" / f"{split}_image_paths.csv")]


def study_rows(tree: Path) -> dict[str, int]:
    rows = [
        row for split in ("train", "valid") for row in read_lines(tree / "MURA-v1.1" / f"{split}_labeled_studies.csv")
    ]
    return {path: int(label) for path, label in (row.rsplit(",", 1) for row in rows)}


def lesion_rows(tree: Path) -> list[dict[str, str]]:
    header, *rows = read_lines(tree / "lesions.csv")
    return [dict(zip(header.split(","), row.split(","), strict=True)) for row in rows]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_layout_is_the_official_one(tree):
    assert sorted(p.name for p in tree.iterdir()) == ["MURA-v1.1", "lesions.csv"]
    assert sorted(p.name for p in (tree / "MURA-v1.1").iterdir()) == sorted(
        [*OFFICIAL_CSVS, SETTINGS_FILE, "train", "valid"]
    )
    asked = load_spec(root="elsewhere", studies_per_part=5, seed=0, **{**SMALL, "num_workers": 3})
    assert read_settings(tree / "MURA-v1.1") == recorded_settings(asked)
    for path in image_rows(tree):
        split, part, patient, study, image = path.split("/")[1:]
        assert split in ("train", "valid") and part in {f"XR_{p.upper()}" for p in BODY_PARTS}
        assert patient.startswith("patient") and len(patient) == len("patient") + 5
        assert study.rsplit("_", 1)[1] in ("positive", "negative") and image.startswith("image")
    on_disk = {str(p.relative_to(tree)) for p in (tree / "MURA-v1.1").rglob("*.png")}
    assert on_disk == set(image_rows(tree))


def test_csvs_are_headerless_and_consistent(tree):
    for name in OFFICIAL_CSVS:
        assert read_lines(tree / "MURA-v1.1" / name)[0].startswith("MURA-v1.1/")
    studies = study_rows(tree)
    assert all(path.endswith("/") for path in studies)
    assert all(label == int(path.rstrip("/").endswith("_positive")) for path, label in studies.items())
    images_per_study = defaultdict(list)
    for path in image_rows(tree):
        folder, image = path.rsplit("/", 1)
        images_per_study[folder + "/"].append(image)
    assert set(images_per_study) == set(studies)
    for images in images_per_study.values():
        assert 1 <= len(images) <= 4
        assert sorted(images) == [f"image{n}.png" for n in range(1, len(images) + 1)]


def test_images_are_grayscale_pngs_within_the_size_range(tree):
    for path in image_rows(tree):
        with Image.open(tree / path) as image:
            assert image.format == "PNG" and image.mode == "L"
            assert all(SMALL["min_side"] <= side <= SMALL["max_side"] for side in image.size)


def test_lesions_sit_in_abnormal_studies_inside_the_image(tree):
    lesions = lesion_rows(tree)
    studies = study_rows(tree)
    assert lesions, "a tree with abnormal studies has lesions"
    boxed = [row for row in lesions if row["x0"]]
    for row in lesions:
        assert row["path"] in set(image_rows(tree)) and row["kind"] in LESION_KINDS
        assert studies[row["path"].rsplit("/", 1)[0] + "/"] == 1
    for row in boxed:
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        with Image.open(tree / row["path"]) as image:
            width, height = image.size
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    lesioned_studies = {row["path"].rsplit("/", 1)[0] + "/" for row in boxed}
    assert lesioned_studies == {path for path, label in studies.items() if label}


def test_lesions_csv_records_which_views_show_the_lesion(tree):
    """Every view of an abnormal study is listed: with its boxes when it shows the lesion (lesion_views), else once
    without a box; metal shows on every view, fractures and lytic spots on a non-empty subset."""
    rows = lesion_rows(tree)
    abnormal = {path for path, label in study_rows(tree).items() if label}
    views_of = defaultdict(set)
    for path in image_rows(tree):
        if path.rsplit("/", 1)[0] + "/" in abnormal:
            views_of[path.rsplit("/", 1)[0]].add(path)
    shown, hidden = {r["path"] for r in rows if r["x0"]}, [r["path"] for r in rows if not r["x0"]]
    assert len(hidden) == len(set(hidden)) and not shown & set(hidden)
    assert shown | set(hidden) == set().union(*views_of.values())
    kinds = {row["path"].rsplit("/", 1)[0]: row["kind"] for row in rows}
    assert not {kinds[r.rsplit("/", 1)[0]] for r in hidden} & {"hardware"}
    assert hidden, "with subset lesion_views some views of multi-view abnormal studies show no lesion"


@pytest.mark.parametrize(("mode", "counts"), [("all", {4}), ("one", {1}), ("subset", {1, 2, 3, 4}), (None, {0})])
def test_lesion_views_choose_how_many_views_show_the_lesion(mode, counts):
    rng = np.random.default_rng(0)
    drawn = {sum(lesion_flags(rng, 4, mode)) for _ in range(200)}
    assert drawn == counts


def test_bad_lesion_views_are_refused(tmp_path):
    with pytest.raises(SyntheticDataError, match=r"lesion_views=.* needs one of all, subset, one for each lesion kind"):
        generate_synthetic_mura(tmp_path, studies_per_part=4, seed=0, lesion_views={"fracture": "half"}, **SMALL)


def test_every_body_part_and_lesion_kind_renders_boxes_inside_the_image():
    spec = load_spec(root="unused", studies_per_part=4, seed=0, **SMALL)
    rng = np.random.default_rng(0)
    for part in BODY_PARTS:
        normal, none = render_image(part, rng, spec)
        assert none == [] and normal.dtype == np.uint8
        for kind in LESION_KINDS:
            image, lesions = render_image(part, rng, spec, kind)
            assert 1 <= len(lesions) <= spec.lesions_per_image[1]
            for lesion in lesions:
                x0, y0, x1, y1 = lesion.box
                assert lesion.kind == kind and 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]


def test_patients_are_split_disjointly_and_numbered_train_first():
    spec = load_spec(root="unused", studies_per_part=60, seed=3)
    plans = plan_studies(spec)
    patients = {split: {p.patient for p in plans if p.split == split} for split in ("train", "valid")}
    assert not patients["train"] & patients["valid"]
    assert max(patients["train"]) < min(patients["valid"])
    assert all(sum(p.part == part for p in plans) == 60 for part in BODY_PARTS)
    assert 0.1 < len(patients["valid"]) / (len(patients["train"]) + len(patients["valid"])) < 0.3
    assert all(sum(p.label for p in plans if p.part == part) == 24 for part in BODY_PARTS)  # 40 % of 60
    by_patient = defaultdict(list)
    for plan in plans:
        by_patient[plan.patient].append(plan)
    assert any(len({p.part for p in studies}) > 1 for studies in by_patient.values())
    for studies in by_patient.values():
        for part in {p.part for p in studies}:
            assert sorted(p.number for p in studies if p.part == part) == list(
                range(1, 1 + sum(p.part == part for p in studies))
            )


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, tree):
    generate_synthetic_mura(tmp_path / "again", studies_per_part=5, seed=0, **{**SMALL, "num_workers": 2})
    assert tree_digest(tmp_path / "again") == tree_digest(tree)


def test_another_seed_gives_other_data(tmp_path, tree):
    generate_synthetic_mura(tmp_path / "other", studies_per_part=5, seed=1, **SMALL)
    assert tree_digest(tmp_path / "other") != tree_digest(tree)


def test_whole_image_statistics_do_not_give_the_label_away(tmp_path):
    root = generate_synthetic_mura(tmp_path, studies_per_part=18, seed=7, **SMALL)
    paths = image_rows(tmp_path)
    labels = [int("_positive/" in path) for path in paths]
    pixels = [np.asarray(Image.open(root.parent / path), dtype=np.float32) for path in paths]
    assert len(paths) >= 250
    for name, statistic in (("mean", np.mean), ("max", np.max), ("p99", lambda a: np.percentile(a, 99))):
        auc = roc_auc_score(labels, [statistic(a) for a in pixels])
        assert max(auc, 1 - auc) < 0.75, f"{name} intensity alone gives AUROC {max(auc, 1 - auc):.2f}"


def test_an_existing_tree_is_never_overwritten(tree):
    before = tree_digest(tree)
    with pytest.raises(SyntheticDataError, match=r"MURA-v1\.1 already exists; delete it"):
        generate_synthetic_mura(tree, studies_per_part=4, seed=5, **SMALL)
    assert tree_digest(tree) == before
    assert sorted(p.name for p in tree.iterdir()) == ["MURA-v1.1", "lesions.csv"]


def test_an_interrupted_run_leaves_no_tree(tmp_path, monkeypatch):
    def broken_study(plan, spec, out_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(write, "write_study", broken_study)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_mura(tmp_path, studies_per_part=4, seed=0, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_unknown_or_bad_settings_are_refused(tmp_path):
    with pytest.raises(SyntheticDataError, match="bogus"):
        generate_synthetic_mura(tmp_path, studies_per_part=4, seed=0, bogus=1)
    with pytest.raises(SyntheticDataError, match="min_side"):
        generate_synthetic_mura(tmp_path, studies_per_part=4, seed=0, min_side=300, max_side=200)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("studies_per_part", [1, 3])
def test_sizes_too_small_for_train_and_valid_studies_of_both_labels_are_refused(tmp_path, studies_per_part):
    with pytest.raises(SyntheticDataError, match=f"studies_per_part={studies_per_part} is too small.*at least 4"):
        generate_synthetic_mura(tmp_path, studies_per_part=studies_per_part, seed=0, **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("knob", [{"valid_fraction": 0.0}, {"abnormal_fraction": 1.0}])
def test_fractions_that_leave_a_split_or_label_empty_are_refused(knob):
    with pytest.raises(SyntheticDataError, match="strictly between 0 and 1"):
        load_spec(root="unused", studies_per_part=12, seed=0, **knob)


def test_every_default_lives_in_the_package_and_the_cli_composes_it():
    package_defaults = OmegaConf.load(Path(write.__file__).with_name(DEFAULTS_FILE))
    cli_only = set(OmegaConf.load(REPO_ROOT / "conf" / "synthetic.yaml")) - {"defaults", "hydra"}
    assert cli_only == {"root", "studies_per_part", "seed"} and not cli_only & set(package_defaults)
    spec = load_spec(root="unused", studies_per_part=4, seed=0)
    cli = compose("synthetic", ["root=unused", "studies_per_part=4", "seed=0"])
    assert OmegaConf.to_container(cli) == OmegaConf.to_container(OmegaConf.structured(spec))


def test_root_size_and_seed_have_no_default(tmp_path):
    with pytest.raises(SyntheticDataError, match="studies_per_part"):
        load_spec(root=str(tmp_path), seed=0)


def run_cli(cwd: Path, *overrides: str):
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}
    return run_module("mura_lightning.synthetic", *overrides, cwd=cwd, env=env)


def test_cli_writes_only_under_root(tmp_path):
    overrides = (f"root={tmp_path / 'out'}", "studies_per_part=4", "seed=0", "max_side=200", "num_workers=1")
    done = run_cli(tmp_path, *overrides)
    assert done.returncode == 0, done.stderr
    assert "synthetic MURA:" in done.stdout and "images/s" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["MURA-v1.1", "lesions.csv"]
    again = run_cli(tmp_path, *overrides)
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.parametrize(
    ("studies_per_part", "knobs"),
    [(12, {}), (4, {}), (12, {"valid_fraction": 0.05, "abnormal_fraction": 0.05}), (60, {"abnormal_fraction": 0.9})],
)
def test_every_body_part_has_train_and_valid_studies_of_both_labels(studies_per_part, knobs):
    for seed in range(8):
        plans = plan_studies(load_spec(root="unused", studies_per_part=studies_per_part, seed=seed, **knobs))
        present = {(plan.part, plan.split, plan.label) for plan in plans}
        wanted = {(part, split, label) for part in BODY_PARTS for split in ("train", "valid") for label in (0, 1)}
        assert not wanted - present, f"seed={seed}: no studies for {sorted(wanted - present)}"
