"""The model card (Mitchell et al., "Model Cards for Model Reporting", FAT* 2019) of a scored run: model details,
intended and out-of-scope use, factors, metrics with their intervals, evaluation and training data, per-body-part
results, calibration, and caveats derived from how the model was trained; as markdown (MODEL_CARD.md), which the
HTML report shows too."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from mura_lightning.data.lesions import LESIONS_FILE
from mura_lightning.evaluation.bootstrap import METRICS, BootstrapSettings
from mura_lightning.evaluation.metrics import metrics_by_body_part
from mura_lightning.evaluation.tables import interval_text, number_text
from mura_lightning.reporting.source import EVALUATION, STAGE, ScoredRun
from mura_lightning.reporting.templating import environment

PAPER_IMAGE_SIZE = 320  # the MURA paper's input size
FEW_STUDIES = 50  # test studies of a body part below which its intervals are wide
METRIC_TITLES = {
    "kappa": "Cohen's kappa",
    "auroc": "AUROC",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "accuracy": "accuracy",
    "f1_abnormal": "F1 (abnormal)",
    "ece": "expected calibration error",
    "brier": "Brier score",
}
CALIBRATION_METRICS = ("ece", "brier")
DEFAULT_CONFIDENCE = BootstrapSettings().confidence


@dataclass(frozen=True)
class CardFacts:
    """What the model card says, gathered from a scored run (see `card_facts`)."""

    title: str
    written: str
    model: dict[str, Any]
    metrics: list[dict[str, str]]
    body_parts: list[dict[str, str]]
    calibration: list[dict[str, str]]
    data: dict[str, Any]
    recipe: list[tuple[str, str]]
    caveats: list[str]
    config_yaml: str
    config_source: str


def confidence_text(results: dict[str, Any]) -> str:
    """The confidence of the results' bootstrap intervals, as a percentage."""
    return f"{(results.get('bootstrap') or {}).get('confidence', DEFAULT_CONFIDENCE):.0%}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _select(config: dict | None, dotted: str) -> Any:
    node: Any = config or {}
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def is_synthetic(run: ScoredRun) -> bool:
    """Whether the model was trained on synthetic MURA: its data module is the synthetic one, or its data root
    has the generator's lesions.csv beside it."""
    target = str(_select(run.config, "data._target_") or "")
    roots = [run.datamodule.get("root"), _select(run.config, "data.root"), run.results.get("data_root")]
    beside = any(root and (Path(root).parent / LESIONS_FILE).is_file() for root in roots)
    return "Synthetic" in target or beside


def _pretrained(run: ScoredRun) -> bool | None:
    value = run.results.get("pretrained", _select(run.config, "model.backbone.pretrained"))
    return None if value is None else bool(value)


def metric_rows(results: dict[str, Any], metrics=METRICS) -> list[dict[str, str]]:
    """One row per study-level test metric: name, `value (low-high)` and the key it was read from."""
    rows = []
    for metric in metrics:
        key = f"{STAGE}/study/{metric}"
        if key in results:
            text = interval_text(results[key], results.get(f"{key}_ci_low"), results.get(f"{key}_ci_high"), "n/a")
            rows.append({"metric": METRIC_TITLES.get(metric, metric), "value": text, "key": key})
    return rows


def body_part_rows(run: ScoredRun) -> list[dict[str, str]]:
    """The per-body-part table: studies, kappa and AUROC with intervals, sensitivity, specificity, threshold."""
    table = metrics_by_body_part(run.results, STAGE, "study")
    studies = run.level("study").groupby("body_part").size()
    rows = []
    for part, row in table.iterrows():
        rows.append(
            {
                "body_part": part,
                "studies": str(int(studies.sum() if part == "overall" else studies.get(part, 0))),
                "kappa": interval_text(row["kappa"], row.get("kappa_ci_low"), row.get("kappa_ci_high"), "n/a"),
                "auroc": interval_text(row["auroc"], row.get("auroc_ci_low"), row.get("auroc_ci_high"), "n/a"),
                "sensitivity": number_text(row["sensitivity"], "n/a"),
                "specificity": number_text(row["specificity"], "n/a"),
                "threshold": number_text(row.get("threshold"), "per part"),
            }
        )
    return rows


def calibration_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """ECE and Brier score at study and image level."""
    return [
        {
            "metric": METRIC_TITLES[metric],
            "study": number_text(results.get(f"{STAGE}/study/{metric}"), "n/a"),
            "image": number_text(results.get(f"{STAGE}/image/{metric}"), "n/a"),
        }
        for metric in CALIBRATION_METRICS
    ]


def model_details(run: ScoredRun) -> dict[str, Any]:
    """Backbones, weights' origin, input, decisions, checkpoints with digests, and the software."""
    results = run.results
    preprocessing = results.get("preprocessing") or _select(run.config, "model.preprocessing") or {}
    temperatures = results.get("temperatures") or [results.get(f"{STAGE}/temperature", 1.0)]
    pretrained = _pretrained(run)
    return {
        "backbones": results.get("models") or [results.get("model", "unknown")],
        "weights": {True: "ImageNet-pretrained, then trained on MURA", False: "trained from scratch (random init)"}.get(
            pretrained, "unknown"
        ),
        "image_size": preprocessing.get("image_size"),
        "in_chans": preprocessing.get("in_chans"),
        "study_aggregation": results.get("study_aggregation") or _select(run.config, "model.study_aggregation"),
        "threshold": results.get(f"{STAGE}/threshold"),
        "temperatures": ", ".join(f"{t:.3g}" for t in temperatures),
        "tta": results.get("tta", "none"),
        "checkpoints": [{"path": c.path, "sha256": c.sha256 or "(file not found)"} for c in run.checkpoints],
        "software": f"mura-lightning {_version('mura-lightning')}, torch {torch.__version__}, "
        f"lightning {_version('lightning')}",
    }


def training_recipe(run: ScoredRun) -> list[tuple[str, str]]:
    """The settings that make the recipe, from the composed config (those it holds)."""
    config = run.config
    entries = [
        ("data", _select(config, "data._target_")),
        ("data root", _select(config, "data.root") or run.datamodule.get("root")),
        ("body parts", ", ".join(_select(config, "data.body_parts") or run.datamodule.get("body_parts") or [])),
        ("validation", _validation_text(config, run.datamodule)),
        ("loss", _select(config, "loss._target_")),
        ("optimizer", _select(config, "optimizer._target_")),
        ("learning rate", _select(config, "optimizer.lr")),
        ("scheduler", _select(config, "scheduler.builder._target_") or _select(config, "scheduler._target_")),
        ("epochs", _select(config, "trainer.max_epochs")),
        ("batch size", _select(config, "data.batch_size")),
        ("precision", _select(config, "trainer.precision")),
        ("augmentation", _augmentation_text(config)),
        ("seed", _select(config, "seed")),
        ("overrides", " ".join(run.training_overrides)),
    ]
    return [(name, str(value)) for name, value in entries if value not in (None, "", [])]


def _validation_text(config: dict | None, datamodule: dict) -> str | None:
    folds = _select(config, "data.num_folds") or datamodule.get("num_folds")
    if folds:
        return f"fold {_select(config, 'data.fold') or datamodule.get('fold')} of {folds}, by patient"
    fraction = _select(config, "data.val_fraction") or datamodule.get("val_fraction")
    return f"{fraction:.0%} of the training patients held out" if fraction else None


def _augmentation_text(config: dict | None) -> str | None:
    flip, degrees = _select(config, "data.hflip_prob"), _select(config, "data.rotation_degrees")
    if flip is None and degrees is None:
        return None
    return f"horizontal flips (p={flip}), rotations up to {degrees} degrees"


def caveats(run: ScoredRun, details: dict[str, Any]) -> list[str]:
    """Limitations that follow from how this model was trained and tested."""
    notes = []
    if is_synthetic(run):
        notes.append(
            "Trained and tested on synthetic radiographs (mura_lightning.synthetic): drawn bones with drawn "
            "lesions. These numbers say how well the pipeline learns that task, nothing about real radiographs."
        )
    if _pretrained(run) is False:
        notes.append("Trained from scratch, without ImageNet pretraining (the MURA paper starts from ImageNet).")
    size = details.get("image_size")
    if size and size < PAPER_IMAGE_SIZE:
        notes.append(
            f"Images are seen at {size} px (the MURA paper uses {PAPER_IMAGE_SIZE}); fine fractures may vanish."
        )
    studies = run.level("study").groupby("body_part").size()
    small = [f"{part} ({count})" for part, count in studies.items() if count < FEW_STUDIES]
    if small:
        notes.append(
            f"Few test studies for {', '.join(small)}: their intervals are wide; read the interval, not the point."
        )
    if run.results.get(f"{STAGE}/threshold") == 0.5 and not run.results.get("val/tuned_threshold"):
        notes.append("The decision threshold is the fixed 0.5, not tuned on validation data.")
    notes.append(
        "CAMs show which regions moved the score, not a diagnosis; a confident CAM over the wrong region is a "
        "warning, not an explanation."
    )
    notes.append(
        "One model, one training run: seeds and data splits move kappa by several hundredths (see "
        "cross-validation in the README); compare runs with `python -m mura_lightning.compare`."
    )
    return notes


def card_facts(run: ScoredRun, title: str, counts: pd.DataFrame, counts_note: str) -> CardFacts:
    """Everything the model card says about `run` (`counts`: `data_counts`' table)."""
    details = model_details(run)
    written = datetime.fromtimestamp((run.folder / "results.json").stat().st_mtime, tz=timezone.utc)
    data = {
        "test": "the official MURA valid split" + (" (synthetic)" if is_synthetic(run) else ""),
        "test_root": str(run.data_root() or "unknown"),
        "counts": counts.reset_index().to_dict(orient="records"),
        "counts_note": counts_note,
        "evaluated_by": "python -m mura_lightning.evaluate" if run.kind == EVALUATION else "the training run's test",
        "confidence": confidence_text(run.results),
    }
    config = run.config or {}
    return CardFacts(
        title=title,
        written=written.strftime("%Y-%m-%d %H:%M UTC"),
        model=details,
        metrics=metric_rows(run.results),
        body_parts=body_part_rows(run),
        calibration=calibration_rows(run.results),
        data=data,
        recipe=training_recipe(run),
        caveats=caveats(run, details),
        config_yaml=yaml.safe_dump(config, sort_keys=False, default_flow_style=False),
        config_source=run.config_source,
    )


def model_card_markdown(facts: CardFacts, with_config: bool = True) -> str:
    """The model card as markdown; `with_config` appends the composed config as a YAML block."""
    return environment().get_template("model_card.md.j2").render(card=facts, with_config=with_config)
