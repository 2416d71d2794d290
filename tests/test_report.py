"""The run report: report.html and MODEL_CARD.md from a tiny training run and an evaluate folder, their numbers
against results.json, the error gallery's picks against the prediction file, the comparison report, clear errors;
and, in headless Chromium, the report with no console errors and no request leaving the file, and TensorBoard's
Custom Scalars tab with the body-part chart."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers.browser import browser_page, tensorboard_server
from helpers.mura_trees import standard_studies, write_tree
from helpers.runs import compose, compose_run, read_predictions, run_evaluate, run_module
from PIL import Image

from mura_lightning.compare import compare
from mura_lightning.data.lesions import LESIONS_FILE
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.tables import number_text
from mura_lightning.report import report
from mura_lightning.reporting.build import MODEL_CARD_FILE, REPORT_FILE
from mura_lightning.reporting.gallery import GallerySettings, pick_studies
from mura_lightning.train import train

PER_GROUP, TRUE_POSITIVES = 3, 2
BOX = (2, 3, 12, 15)  # x0, y0, x1, y1 of every lesion, in pixels of the 20 x 24 test images
GREEN = (0, 255, 0)


def write_lesions(root: Path) -> set[str]:
    """lesions.csv beside the tree: one box on every abnormal test image; their absolute paths."""
    paths = sorted(root.glob("valid/*/*/*_positive/*.png"))
    rows = [f"{root.name}/{path.relative_to(root)},fracture,{','.join(map(str, BOX))}" for path in paths]
    (root.parent / LESIONS_FILE).write_text("path,kind,x0,y0,x1,y1\n" + "\n".join(rows) + "\n")
    return {str(path) for path in paths}


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A tiny run trained with report=true, and an evaluation of its checkpoint with report=true."""
    tmp = tmp_path_factory.mktemp("reported")
    root = write_tree(tmp, standard_studies())
    lesion_paths = write_lesions(root)
    gallery = [f"reporting.gallery.per_group={PER_GROUP}", f"reporting.gallery.true_positives={TRUE_POSITIVES}"]
    results = train(compose_run(root, tmp, "report=true", "callbacks.cam=null", *gallery))
    evaluation = run_evaluate(tmp / "eval", results["ckpt_path"], "report=true", *gallery)
    return SimpleNamespace(
        root=root, run=tmp / "run", results=results, eval=tmp / "eval", evaluation=evaluation, lesions=lesion_paths
    )


def page_of(folder: Path) -> str:
    return (folder / REPORT_FILE).read_text()


def shown_numbers(page: str) -> dict[str, tuple[float, str]]:
    """data-key -> (data-value, the text shown) of every number the page marks."""
    found = re.findall(r'data-key="([^"]+)" data-value="([^"]+)">([^<]*)<', page)
    return {key: (float(value), text) for key, value, text in found}


def decoded_images(page: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ]


def check_numbers(page: str, results: dict) -> None:
    shown = shown_numbers(page)
    assert {"test/study/kappa", "test/study/auroc", "test/study/kappa_ci_low", "test/study/auroc_ci_high"} <= set(shown)
    for key, (value, text) in shown.items():
        assert value == pytest.approx(results[key], abs=1e-12), key
        assert text == number_text(results[key]), key
    terminal = html.unescape(re.search(r'<pre class="terminal">(.*?)</pre>', page, re.S).group(1))
    for part in ("shoulder", "wrist", "overall"):
        suffix = "" if part == "overall" else f"/{part}"
        (line,) = [line for line in terminal.splitlines() if line.strip().startswith(part)]
        for metric in ("kappa", "auroc", "sensitivity", "specificity"):
            assert f"{results[f'test/study/{metric}{suffix}']:.3f}" in line, (part, metric)


def test_the_report_of_a_training_run_shows_its_numbers_counts_figures_and_card(reported):
    page = page_of(reported.run)
    check_numbers(page, reported.results)
    images = read_predictions(reported.run, "image")
    for part, rows in images.groupby("body_part"):
        expected = [rows["patient"].nunique(), rows["study"].nunique(), len(rows)]
        cells = re.search(rf"<td>test</td><td>{part}</td>((?:<td class=\"num\">\d+</td>)+)", page).group(1)
        assert [int(n) for n in re.findall(r"\d+", cells)][:3] == expected, part
    assert re.search(r"<td>train</td><td>all</td>", page) and re.search(r"<td>val</td><td>all</td>", page)
    pictures = decoded_images(page)
    assert len(pictures) >= 7 and all(picture.width >= 128 and picture.height >= 128 for picture in pictures)
    # self-contained: nothing to fetch, no script
    assert not re.search(r'(src|href)="(?!data:|#)', page) and "<script" not in page and "<link" not in page
    card = (reported.run / MODEL_CARD_FILE).read_text()
    digest = hashlib.sha256(Path(reported.results["ckpt_path"]).read_bytes()).hexdigest()
    assert digest in card and digest in page
    assert "not a diagnostic device" in card and "Trained from scratch" in card and "seen at 32 px" in card
    assert "Mitchell et al." in card and "| wrist | 6 |" in card and "bodypart=[shoulder,wrist]" in card


def test_the_gallery_shows_the_most_confident_errors_of_the_prediction_file(reported):
    studies = read_predictions(reported.run, "study")
    wrong = studies["label"] != studies["pred"]
    assert wrong.any()
    expected = {
        "false negatives": studies[(studies["label"] == 1) & (studies["pred"] == 0)]
        .sort_values(["prob", "study"])
        .head(PER_GROUP),
        "false positives": studies[(studies["label"] == 0) & (studies["pred"] == 1)]
        .sort_values(["prob", "study"], ascending=[False, True])
        .head(PER_GROUP),
        "true positives": studies[(studies["label"] == 1) & (studies["pred"] == 1)]
        .sort_values(["prob", "study"], ascending=[False, True])
        .head(TRUE_POSITIVES),
    }
    page = page_of(reported.run)
    shown = re.findall(r'data-group="([^"]+)" data-study="([^"]+)" data-prob="([^"]+)"', page)
    for group, rows in expected.items():
        picked = [(study, float(prob)) for shown_group, study, prob in shown if shown_group == group]
        assert picked == list(zip(rows["study"], rows["prob"], strict=True)), group
    # each shown study's views with their own probabilities, lesion boxes outlined in green on lesion images only
    images = read_predictions(reported.run, "image")
    gallery = page[page.index('<section id="gallery">') : page.index('<section id="model-card"')]
    blocks = re.split(r'<div class="study"', gallery)[1:]
    assert len(blocks) == len(shown)
    outlined = []
    for block in blocks:
        study = re.search(r'data-study="([^"]+)"', block).group(1)
        views = images[images["study"] == study].sort_values("path")
        probs = [float(p) for p in re.findall(r'<figcaption data-prob="([^"]+)"', block)]
        assert probs == pytest.approx(views["prob"].tolist(), abs=1e-12)
        for picture, path in zip(decoded_images(block), views["path"], strict=True):
            greens = sum(1 for pixel in picture.convert("RGB").getdata() if pixel == GREEN)
            assert (greens > 0) == (path in reported.lesions), path
            outlined.append(greens > 0)
    assert any(outlined) and not all(outlined)


def test_picks_are_ordered_by_confidence_and_ties_by_study():
    studies = pd.DataFrame(
        {
            "study": ["a", "b", "c", "d", "e", "f", "g"],
            "label": [1, 1, 1, 0, 0, 0, 1],
            "pred": [0, 0, 0, 1, 1, 0, 1],
            "prob": [0.30, 0.10, 0.10, 0.60, 0.95, 0.05, 0.99],
        }
    )
    picked = pick_studies(studies, GallerySettings(per_group=2, true_positives=1))
    assert list(picked["false negatives"]["study"]) == ["b", "c"]
    assert list(picked["false positives"]["study"]) == ["e", "d"]
    assert list(picked["true positives"]["study"]) == ["g"]
    assert all(len(rows) == 0 for rows in pick_studies(studies, GallerySettings(0, 0)).values())


def test_the_report_of_an_evaluation_shows_its_numbers_and_says_how_it_was_scored(reported):
    page = page_of(reported.eval)
    check_numbers(page, reported.evaluation)
    assert "evaluation <code>" in page
    card = (reported.eval / MODEL_CARD_FILE).read_text()
    assert "python -m mura_lightning.evaluate" in card and "not a diagnostic device" in card


def test_the_command_reports_a_comparison_naming_the_models(reported, tmp_path):
    out = tmp_path / "compare"
    overrides = [f"a={reported.run}", f"b={reported.eval}", f"output={out}", "metrics.bootstrap.samples=200"]
    compare(compose("compare", overrides))
    finished = run_module("mura_lightning.report", str(out))
    assert finished.returncode == 0, finished.stderr[-2000:]
    page = page_of(out)
    assert "densenet169 run" in page and "densenet169 eval" in page  # same setting: the folder names tell them apart
    (forest,) = decoded_images(page)
    assert forest.width > 400
    assert "B - A" in page and "| overall | kappa |" not in page and "<table>" in page


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "give the folder to report on: python -m mura_lightning.report DIR"),
        (["dir=/nonexistent/run"], "/nonexistent/run is not a folder"),
        (["dir=EMPTY"], r"results.json: no such file; a report needs a finished training run"),
        (["dir=RUN", "reporting.gallery.per_group=-1"], r"reporting.gallery.per_group=-1 must be a whole number"),
    ],
)
def test_bad_folders_and_settings_are_clear_errors(reported, tmp_path, overrides, message):
    overrides = [item.replace("EMPTY", str(tmp_path)).replace("RUN", str(reported.run)) for item in overrides]
    with pytest.raises(MuraError, match=message):
        report(compose("report", overrides))


def test_a_run_without_its_test_predictions_is_refused_naming_the_file(reported, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(reported.run / "results.json", folder)
    with pytest.raises(MuraError, match=rf"{folder}/predictions_test.csv does not exist: train with test=true"):
        report(compose("report", [f"dir={folder}"]))


def test_report_true_without_a_test_is_refused_before_training(tmp_path):
    with pytest.raises(MuraError, match="report=true needs test=true"):
        train(compose_run(tmp_path, tmp_path, "report=true", "test=false"))


def test_the_command_without_a_folder_ends_with_one_line_and_code_2():
    finished = run_module("mura_lightning.report")
    assert finished.returncode == 2
    errors = [line for line in finished.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "give the folder to report on" in errors[0] and "Traceback" not in finished.stderr


def test_chromium_shows_the_report_without_console_errors_or_requests_leaving_the_file(reported, tmp_path):
    url = (reported.run / REPORT_FILE).resolve().as_uri()
    with browser_page(tmp_path) as (page, log):
        page.goto(url, wait_until="load")
        shown = page.eval_on_selector_all("[data-key]", "nodes => nodes.map(n => [n.dataset.key, n.textContent])")
        broken = page.eval_on_selector_all("img", "images => images.filter(i => !i.complete || !i.naturalWidth).length")
        headings = page.locator("h2").all_inner_texts()
    assert not log.console_errors() and not log.errors, (log.console, log.errors)
    assert [request for request in log.requests if request != url and not request.startswith("data:")] == []
    assert shown and all(text == number_text(reported.results[key]) for key, text in shown)
    assert broken == 0
    assert {"Headline", "Body parts", "Data", "Figures", "Error gallery", "Model details"} <= set(headings)


def test_tensorboards_custom_scalars_tab_shows_the_body_part_chart(reported, tmp_path):
    executable = shutil.which("tensorboard") or str(Path(sys.executable).with_name("tensorboard"))
    with tensorboard_server(reported.run / "tensorboard", executable) as url, browser_page(tmp_path) as (page, log):
        page.goto(f"{url}/#custom_scalars")
        chart = page.get_by_text("kappa by body part", exact=True).first
        chart.wait_for(state="visible", timeout=60_000)
        titles = page.get_by_text("auroc by body part", exact=True).count()
    assert titles >= 1
    assert not log.errors, log.errors
    assert all(request.startswith(url) or request.startswith("data:") for request in log.requests)


def test_a_run_folders_config_is_resolved_against_its_own_hydra_settings(tmp_path):
    from hydra.core.hydra_config import HydraConfig

    from mura_lightning.reporting.source import resolved_config

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(
        "paths:\n  output_dir: ${hydra:runtime.output_dir}\n  data_dir: ${paths.output_dir}/data\n"
    )
    (tmp_path / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    output_dir: /runs/one\n")
    compose("report", [f"dir={tmp_path}"])  # a running app's own Hydra settings, which must survive
    running = HydraConfig.instance().cfg
    assert resolved_config(tmp_path) == {"paths": {"output_dir": "/runs/one", "data_dir": "/runs/one/data"}}
    assert HydraConfig.instance().cfg is running


def test_the_threshold_in_force_is_the_global_one_or_each_body_parts():
    import torch

    from mura_lightning.data.index import BODY_PARTS
    from mura_lightning.reporting.build import threshold_text
    from mura_lightning.reporting.source import TRAINING_RUN, ScoredRun

    predictions = pd.DataFrame({"level": ["study", "study"], "body_part": ["wrist", "hand"]})

    def scored(results):
        return ScoredRun(Path("."), TRAINING_RUN, results, predictions, [], None, "")

    single = scored({"test/study/threshold": 0.4, "test/threshold": 0.4})
    assert single.thresholds() == 0.4 and threshold_text(single) == "the threshold 0.400"
    per_part = scored({"test/threshold": 0.5, "test/study/threshold/wrist": 0.3, "test/study/threshold/hand": 0.7})
    expected = torch.tensor([0.7 if part == "hand" else 0.3 if part == "wrist" else 0.5 for part in BODY_PARTS])
    assert torch.equal(per_part.thresholds(), expected)
    assert threshold_text(per_part) == "per-body-part thresholds: hand 0.700, wrist 0.300"
