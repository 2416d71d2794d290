"""A scored run's report: `report.html` (one self-contained file: headline, body-part table, data counts, figures,
error gallery, model card, composed config) and `MODEL_CARD.md`, written into the run's folder."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import markdown
import torch
import yaml
from omegaconf import OmegaConf
from rich.console import Console

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.evaluation.tables import print_metrics_table
from mura_lightning.io import write_text_atomic
from mura_lightning.reporting.counts import data_counts
from mura_lightning.reporting.figures import report_figures
from mura_lightning.reporting.gallery import GallerySettings, build_gallery
from mura_lightning.reporting.model_card import METRIC_TITLES, card_facts, confidence_text, model_card_markdown
from mura_lightning.reporting.source import STAGE, ScoredRun, read_scored_run
from mura_lightning.reporting.templating import environment
from mura_lightning.runs import model_setting

log = logging.getLogger(__name__)

REPORT_FILE, MODEL_CARD_FILE = "report.html", "MODEL_CARD.md"
HEADLINE = ("kappa", "auroc", "sensitivity", "specificity")
TERMINAL_WIDTH = 100
FIGURE_CAPTIONS = {
    "overall": [
        ("confusion_matrix", "confusion matrix at the threshold(s) in force"),
        ("roc", "ROC curve"),
        ("pr", "precision-recall curve"),
        ("reliability", "reliability diagram: observed frequency of abnormal studies per probability bin"),
    ],
    "by_body_part": [
        ("roc_by_body_part", "ROC per body part (AUC in the legend)"),
        ("pr_by_body_part", "precision-recall per body part"),
        ("confusion_by_body_part", "confusion matrix per body part"),
    ],
}


@dataclass(frozen=True)
class ReportSettings:
    """`reporting` (conf/reporting/default.yaml): the error gallery's settings and the figures' resolution."""

    gallery: GallerySettings
    figure_dpi: int = 90

    @classmethod
    def from_config(cls, node: Any) -> ReportSettings:
        """From the `reporting` config node (a DictConfig or a plain dict)."""
        config = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        return cls(gallery=GallerySettings(**config["gallery"]), figure_dpi=config["figure_dpi"])


def run_title(run: ScoredRun) -> str:
    """What the model is, by its backbone and overrides."""
    backbone, overrides = model_setting(run.folder)
    return " ".join([backbone, *overrides])


def terminal_table(results: dict[str, Any]) -> str:
    """The body-part table exactly as train and evaluate print it."""
    console = Console(record=True, width=TERMINAL_WIDTH, file=io.StringIO())
    print_metrics_table(results, STAGE, console=console)
    return console.export_text()


def _headline(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for metric in HEADLINE:
        key = f"{STAGE}/study/{metric}"
        rows.append(
            {
                "name": f"study {METRIC_TITLES[metric]}",
                "key": key,
                "value": results.get(key),
                "low": results.get(f"{key}_ci_low"),
                "high": results.get(f"{key}_ci_high"),
            }
        )
    return rows


def threshold_text(run: ScoredRun) -> str:
    """The decision threshold in force, or each body part's."""
    threshold = run.thresholds()
    if isinstance(threshold, torch.Tensor):
        parts = ", ".join(f"{part} {float(threshold[BODY_PARTS.index(part)]):.3f}" for part in run.body_parts)
        return f"per-body-part thresholds: {parts}"
    return f"the threshold {threshold:.3f}"


def write_run_report(folder: str | Path, settings: ReportSettings) -> list[Path]:
    """Write report.html and MODEL_CARD.md into a training run or evaluate folder; their paths."""
    run = read_scored_run(folder)
    title = run_title(run)
    studies, images = run.level("study"), run.level("image")
    counts, counts_note = data_counts(images, run.datamodule)
    facts = card_facts(run, title, counts, counts_note)
    card_path = write_text_atomic(run.folder / MODEL_CARD_FILE, model_card_markdown(facts))
    gallery, gallery_note = build_gallery(
        studies, images, [c.path for c in run.checkpoints], run.data_root(), settings.gallery
    )
    bootstrap = run.results.get("bootstrap") or {}
    page = (
        environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            kind=run.kind,
            folder=str(run.folder),
            studies=len(studies),
            patients=studies["patient"].nunique(),
            images=len(images),
            headline=_headline(run.results),
            confidence=confidence_text(run.results),
            bootstrap=f"{bootstrap.get('samples', '?')} resamples, seed {bootstrap.get('seed', '?')}",
            threshold_text=threshold_text(run),
            terminal_table=terminal_table(run.results),
            card=facts,
            card_html=markdown.markdown(model_card_markdown(facts, with_config=False), extensions=["tables"]),
            figures=report_figures(studies, run.thresholds(), title, settings.figure_dpi),
            figure_captions=FIGURE_CAPTIONS,
            gallery=gallery,
            gallery_note=gallery_note,
            cam_method=settings.gallery.cam_method,
            evaluation_yaml=yaml.safe_dump(run.evaluation_config, sort_keys=False) if run.evaluation_config else "",
        )
    )
    report_path = write_text_atomic(run.folder / REPORT_FILE, page)
    log.info("report: %s; model card: %s", report_path, card_path)
    return [report_path, card_path]
