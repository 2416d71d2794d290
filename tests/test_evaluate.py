"""Evaluate and predict: the same numbers as training, the official submission format, every input kind, and
clear errors for bad checkpoints and inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.runs import compose, compose_run, read_predictions, run_module
from PIL import Image
from sklearn.metrics import cohen_kappa_score

from mura_lightning.errors import MuraError
from mura_lightning.evaluate import evaluate
from mura_lightning.evaluation.metrics import METRIC_NAMES
from mura_lightning.evaluation.outputs import PREDICTION_COLUMNS
from mura_lightning.inference.checkpoints import CheckpointError, load_classifier
from mura_lightning.predict import predict
from mura_lightning.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny tree and two checkpoints trained on it (DenseNet-169, ResNet-50 with one input channel)."""
    from helpers.mura_trees import standard_studies, write_tree

    tmp = tmp_path_factory.mktemp("trained")
    root = write_tree(tmp, standard_studies())
    densenet = train(compose_run(root, tmp / "densenet"))
    resnet = train(compose_run(root, tmp / "resnet", "model=resnet50", "model.preprocessing.in_chans=1"))
    return root, densenet, resnet


def run_evaluate(tmp_path, *overrides):
    cfg = compose(
        "evaluate",
        [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/eval", "data.num_workers=0", *overrides],
    )
    return evaluate(cfg), tmp_path / "eval"


def test_evaluate_reproduces_the_training_runs_test_metrics(trained, tmp_path):
    _, results, _ = trained
    values, out = run_evaluate(tmp_path, f"ckpt_path={results['ckpt_path']}")
    compared = [f"test/{level}/{name}" for level in ("image", "study") for name in METRIC_NAMES]
    compared += [f"test/study/{name}/{part}" for name in METRIC_NAMES for part in ("shoulder", "wrist")]
    for key in compared:
        assert values[key] == pytest.approx(results[key], abs=1e-5, nan_ok=True), key
    assert json.loads((out / "results.json").read_text())["test/study/kappa"] == values["test/study/kappa"]
    table = pd.read_csv(out / "metrics_by_bodypart.csv", index_col="body_part")
    assert list(table.index) == ["shoulder", "wrist", "overall"]
    assert {"kappa", "auroc", "accuracy", "sensitivity", "specificity", "f1_abnormal", "f1_normal"} <= set(table)
    images = read_predictions(out, "image")
    studies = read_predictions(out, "study")
    assert list(pd.read_csv(out / "predictions_test.csv").columns) == PREDICTION_COLUMNS
    assert (studies["path"] == studies["study"]).all()
    expected = images.groupby("study")["prob"].mean()
    np.testing.assert_allclose(studies.set_index("study")["prob"].loc[expected.index], expected, atol=1e-6)
    for figure in ("confusion_matrix.png", "roc.png"):
        assert Image.open(out / figure).size[0] > 100


def test_the_submission_file_scores_to_the_reported_kappa(trained, tmp_path):
    root, results, _ = trained
    values, out = run_evaluate(tmp_path, f"ckpt_path={results['ckpt_path']}")
    rows = [line.rsplit(",", 1) for line in (out / "submission.csv").read_text().splitlines()]
    assert all(path.startswith("MURA-v1.1/valid/") and path.endswith("/") for path, _ in rows)
    truth = dict(line.rsplit(",", 1) for line in (root / "valid_labeled_studies.csv").read_text().splitlines())
    labels = [int(truth[path]) for path, _ in rows]
    predicted = [int(label) for _, label in rows]
    assert cohen_kappa_score(labels, predicted) == pytest.approx(values["test/study/kappa"], abs=1e-6, nan_ok=True)


def test_an_ensemble_averages_image_probabilities(trained, tmp_path):
    _, densenet, resnet = trained
    singles = []
    for name, results in (("a", densenet), ("b", resnet)):
        _, out = run_evaluate(tmp_path / name, f"ckpt_path={results['ckpt_path']}")
        singles.append(read_predictions(out, "image").set_index("path")["prob"])
    values, out = run_evaluate(tmp_path / "both", f"ckpt_path=[{densenet['ckpt_path']},{resnet['ckpt_path']}]")
    both = read_predictions(out, "image").set_index("path")["prob"]
    np.testing.assert_allclose(
        both.loc[singles[0].index], (singles[0] + singles[1].loc[singles[0].index]) / 2, atol=1e-6
    )
    assert values["models"] == ["densenet169", "resnet50"] and values["model"] == "densenet169+resnet50"
    assert values["ckpt_paths"] == [densenet["ckpt_path"], resnet["ckpt_path"]]


def test_a_sweep_folder_or_a_glob_is_the_ensemble_of_its_best_checkpoints(trained, tmp_path):
    _, densenet, resnet = trained
    sweep = Path(densenet["run_dir"]).parent.parent
    expected = [densenet["ckpt_path"], resnet["ckpt_path"]]
    listed, _ = run_evaluate(tmp_path / "list", f"ckpt_path=[{','.join(expected)}]")
    for name, value in (("folder", sweep), ("glob", f"'{sweep}/*/run/checkpoints/best*.ckpt'")):
        values, out = run_evaluate(tmp_path / name, f"ckpt_path={value}")
        assert values["ckpt_paths"] == expected, name
        assert json.loads((out / "results.json").read_text())["ckpt_paths"] == expected
        assert values["test/study/auroc"] == pytest.approx(listed["test/study/auroc"], abs=1e-6)


def test_a_folder_without_checkpoints_or_a_glob_matching_nothing_says_what_it_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    message = r"is a folder without best checkpoints \(\*\*/checkpoints/best\*.ckpt under it\)"
    with pytest.raises(CheckpointError, match=message):
        run_evaluate(tmp_path, f"ckpt_path={tmp_path / 'empty'}")
    with pytest.raises(CheckpointError, match=f"ckpt_path={tmp_path}/nothing/\\*.ckpt matches no file"):
        run_evaluate(tmp_path, f"ckpt_path='{tmp_path}/nothing/*.ckpt'")


def test_evaluating_one_body_part(trained, tmp_path):
    _, results, _ = trained
    values, out = run_evaluate(tmp_path, f"ckpt_path={results['ckpt_path']}", "bodypart=wrist")
    assert values["body_parts"] == ["wrist"]
    assert set(read_predictions(out, "study")["body_part"]) == {"wrist"}


def damaged_copies(ckpt_path, tmp_path):
    whole = Path(ckpt_path).read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(whole[: len(whole) // 3])
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.ckpt")
    checkpoint = torch.load(ckpt_path, weights_only=True)
    checkpoint["hyper_parameters"]["backbone"]["name"] = "resnet50"
    torch.save(checkpoint, tmp_path / "other_backbone.ckpt")
    checkpoint["hyper_parameters"]["backbone"]["name"] = "densenet169"
    checkpoint["hyper_parameters"]["pickled"] = np.random.default_rng(0)  # not plain data: refused by weights_only
    torch.save(checkpoint, tmp_path / "pickled.ckpt")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.ckpt", "does not exist"),
        ("cut.ckpt", "cannot read checkpoint .*cut.ckpt: it is damaged"),
        ("foreign.ckpt", "is not a mura-lightning checkpoint"),
        ("other_backbone.ckpt", "the weights in .* do not fit its resnet50 model: .* missing"),
        ("pickled.ckpt", "holds objects that are not plain data"),
    ],
)
def test_bad_checkpoints_are_clear_errors(trained, tmp_path, name, message):
    damaged_copies(trained[1]["ckpt_path"], tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_classifier(tmp_path / name)


def test_a_checkpoint_of_another_backbone_than_expected_is_refused(trained):
    with pytest.raises(CheckpointError, match="holds a densenet169 model, not the resnet50 asked for"):
        load_classifier(trained[1]["ckpt_path"], expected_backbone="resnet50")


def test_evaluate_cli_reports_a_bad_checkpoint_in_one_line(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    finished = run_module("mura_lightning.evaluate", f"ckpt_path={tmp_path}/junk.ckpt", f"hydra.run.dir={tmp_path}/e")
    assert finished.returncode == 2
    assert "error: cannot read checkpoint" in finished.stderr and "Traceback" not in finished.stderr


def test_a_failing_job_of_an_evaluate_sweep_leaves_error_txt_and_the_others_finish(trained, tmp_path):
    """The failure contract every entry point shares (cli.run_as_job): the failed job's folder holds error.txt,
    the other job its results, and summarize reads both."""
    from mura_lightning.summarize import summarize

    missing = tmp_path / "missing.ckpt"
    finished = run_module(
        "mura_lightning.evaluate",
        "-m",
        f"ckpt_path={trained[1]['ckpt_path']},{missing}",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "data.num_workers=0",
        cwd=tmp_path,
    )
    assert finished.returncode != 0
    assert f"error: ckpt_path={missing} does not exist" in finished.stderr
    good, bad = sorted(path for path in (tmp_path / "sweep").iterdir() if path.is_dir())
    assert json.loads((good / "results.json").read_text())["test/study/kappa"] is not None
    assert not (bad / "results.json").exists()
    assert f"ckpt_path={missing} does not exist" in (bad / "error.txt").read_text()
    table = summarize(tmp_path / "sweep")["summary"]
    assert list(table["status"]) == ["ok", "failed"]


def run_predict(tmp_path, ckpt_path, source, *overrides):
    cfg = compose(
        "predict", [f"ckpt_path={ckpt_path}", f"input={source}", f"output={tmp_path}/pred", "num_workers=0", *overrides]
    )
    return predict(cfg), tmp_path / "pred"


@pytest.fixture(scope="module")
def reference_probs(trained, tmp_path_factory):
    """Image probabilities of the DenseNet checkpoint on the valid split, as evaluate computes them."""
    tmp = tmp_path_factory.mktemp("reference")
    _, out = run_evaluate(tmp, f"ckpt_path={trained[1]['ckpt_path']}")
    return read_predictions(out, "image").set_index("path")["prob"]


def image_rows(table):
    return table[table["level"] == "image"]


@pytest.mark.parametrize("kind", ["image", "study", "studies", "csv"])
def test_predict_each_input_kind_gives_the_evaluation_probabilities(trained, reference_probs, tmp_path, kind):
    root, results, _ = trained
    study = root / "valid/XR_WRIST/patient00026/study1_positive"
    source = {
        "image": study / "image1.png",
        "study": study,
        "studies": root / "valid",
        "csv": root / "valid_image_paths.csv",
    }[kind]
    table, out = run_predict(tmp_path, results["ckpt_path"], source)
    images = image_rows(table)
    assert len(images) == {"image": 1, "study": 2, "studies": len(reference_probs), "csv": len(reference_probs)}[kind]
    names_are_relative_to = {"image": study.parent, "study": study.parent, "studies": root, "csv": root.parent}[kind]
    for name, prob in zip(images["path"], images["prob"], strict=True):
        full = str(names_are_relative_to / name)
        assert prob == pytest.approx(reference_probs[full], abs=1e-5)
    studies = table[table["level"] == "study"]
    assert len(studies) == images["study"].nunique()
    assert (out / "submission.csv").exists() == (kind == "csv")
    written = pd.read_csv(out / "predictions.csv")
    assert list(written.columns) == [
        "level",
        "path",
        "sop_instance_uid",
        "study",
        "body_part",
        "label",
        "prob",
        "pred",
        "weight",
        "error",
    ]


def test_predict_lists_unreadable_images_and_predicts_the_rest(trained, tmp_path):
    root, results, _ = trained
    study = tmp_path / "XR_HAND" / "patient1" / "study1_negative"
    study.mkdir(parents=True)
    Image.fromarray(np.full((40, 30), 90, np.uint8)).save(study / "image1.png")
    (study / "image2.png").write_bytes(b"broken")
    table, out = run_predict(tmp_path, results["ckpt_path"], tmp_path / "XR_HAND", "cam=true")
    images = image_rows(table).set_index("path")
    assert "cannot decode image" in images.loc["XR_HAND/patient1/study1_negative/image2.png", "error"]
    assert np.isnan(images.loc["XR_HAND/patient1/study1_negative/image2.png", "prob"])
    good = images.loc["XR_HAND/patient1/study1_negative/image1.png"]
    assert good["error"] == "" and 0 <= good["prob"] <= 1 and good["body_part"] == "hand" and good["label"] == 0
    study_row = table[table["level"] == "study"].iloc[0]
    assert study_row["prob"] == pytest.approx(good["prob"])
    assert sorted(p.name for p in (out / "cams").iterdir()) == ["XR_HAND__patient1__study1_negative__image1.png"]


def test_predict_bad_inputs_are_clear_errors(trained, tmp_path):
    results = trained[1]
    with pytest.raises(MuraError, match="input=.*nowhere does not exist"):
        run_predict(tmp_path, results["ckpt_path"], tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MuraError, match="holds no radiographs"):
        run_predict(tmp_path, results["ckpt_path"], tmp_path / "empty")


def test_evaluate_from_another_folder_names_the_data_root_it_tried(trained, tmp_path):
    """A checkpoint holding a relative data.root (as older ones do) evaluated from another folder."""
    checkpoint = torch.load(trained[1]["ckpt_path"], weights_only=True)
    checkpoint["datamodule_hyper_parameters"]["root"] = "data/MURA-v1.1"
    torch.save(checkpoint, tmp_path / "relative.ckpt")
    finished = run_module("mura_lightning.evaluate", f"ckpt_path={tmp_path / 'relative.ckpt'}", cwd=tmp_path)
    assert finished.returncode == 2
    message = (
        f"relative.ckpt was trained on data.root=data/MURA-v1.1, which is not there (looked for "
        f"{tmp_path}/data/MURA-v1.1): pass data.root=/path/to/MURA-v1.1"
    )
    assert message in finished.stderr and "Traceback" not in finished.stderr
    assert "synthetic" not in finished.stderr


def test_predict_with_no_readable_input_exits_2_naming_the_file(trained, tmp_path):
    """A text file once gave "0 images predicted", exit 0, and rows for `/notes.txt` and `/`."""
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    ckpt = trained[1]["ckpt_path"]
    finished = run_module("mura_lightning.predict", f"ckpt_path={ckpt}", "input=notes.txt", "output=out", cwd=tmp_path)
    assert finished.returncode == 2 and "Traceback" not in finished.stderr
    last = finished.stderr.strip().splitlines()[-1]
    assert "input=notes.txt is not a radiograph: give a PNG, JPEG or DICOM file" in last
    with pytest.raises(MuraError, match=r"no input could be read: cannot decode image .*broken.png"):
        run_predict(tmp_path, ckpt, tmp_path / "broken.png")
    assert not (tmp_path / "out").exists() and not (tmp_path / "pred").exists()


def test_predict_takes_jpegs_as_files_and_in_folders_alike(trained, tmp_path):
    study = tmp_path / "XR_WRIST" / "patient1" / "study1_positive"
    study.mkdir(parents=True)
    Image.fromarray(np.linspace(0, 255, 48 * 40).reshape(48, 40).astype(np.uint8)).save(study / "image1.jpg")
    ckpt = trained[1]["ckpt_path"]
    one, _ = run_predict(tmp_path / "one", ckpt, study / "image1.jpg")
    folder, _ = run_predict(tmp_path / "folder", ckpt, tmp_path / "XR_WRIST")
    assert image_rows(one)["path"].tolist() == ["study1_positive/image1.jpg"]
    assert image_rows(folder)["path"].tolist() == ["XR_WRIST/patient1/study1_positive/image1.jpg"]
    assert image_rows(one)["prob"].iloc[0] == pytest.approx(image_rows(folder)["prob"].iloc[0], abs=1e-6)


def test_predict_cam_overlays_are_drawn_over_the_original_radiograph(trained, tmp_path):
    """Overlays were at the model's input size (32 px here), not the radiograph's."""
    study = tmp_path / "XR_WRIST" / "patient1" / "study1_negative"
    study.mkdir(parents=True)
    gray = np.zeros((90, 70), np.uint8)
    gray[:, 35:] = 255  # left half black, right half white: the overlay keeps the radiograph's layout
    Image.fromarray(gray).save(study / "image1.png")
    _, out = run_predict(tmp_path, trained[1]["ckpt_path"], study, "cam=true", "cam_image_weight=0.9")
    picture = np.asarray(Image.open(out / "cams" / "study1_negative__image1.png"))
    assert picture.shape == (90, 70, 3)
    assert picture[:, :30].mean() < 60 and picture[:, 40:].mean() > 200


def test_an_ensemble_of_members_trained_on_other_body_parts_is_refused_naming_them(trained, tmp_path):
    """A sweep over bodypart=shoulder,wrist was once scored as one ensemble on the first model's parts only."""
    checkpoint = torch.load(trained[1]["ckpt_path"], weights_only=True)
    members = {}
    for number, part in enumerate(("shoulder", "wrist")):
        checkpoint["datamodule_hyper_parameters"]["body_parts"] = [part]
        members[part] = tmp_path / "sweep" / f"{number}_bodypart-{part}" / "checkpoints" / "best-epoch000.ckpt"
        members[part].parent.mkdir(parents=True)
        torch.save(checkpoint, members[part])
    finished = run_module("mura_lightning.evaluate", "ckpt_path=sweep", cwd=tmp_path)
    assert finished.returncode == 2 and "Traceback" not in finished.stderr
    message = (
        "the members of an ensemble must be trained on the same body parts; these were not: "
        f"shoulder: ckpt_path=[{members['shoulder'].relative_to(tmp_path)}]; "
        f"wrist: ckpt_path=[{members['wrist'].relative_to(tmp_path)}] "
        "(evaluate or predict each part's members on their own)"
    )
    assert message in finished.stderr.strip().splitlines()[-1]
    with pytest.raises(MuraError, match="must be trained on the same body parts"):
        run_predict(tmp_path, f"[{members['shoulder']},{members['wrist']}]", trained[0] / "valid")
