"""`python -m mura_lightning.evaluate ckpt_path=FILE [data.root=DIR] [bodypart=...] [tta=hflip]`: the MURA paper's
table for a checkpoint (or an ensemble) on the official valid split, with predictions and a submission file."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from mura_lightning.callbacks.metrics import figures
from mura_lightning.cli import hydra_app
from mura_lightning.data.index import BODY_PARTS, build_index, select_body_parts
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.bootstrap import BootstrapSettings
from mura_lightning.evaluation.metrics import PredictionTable, StageMetrics
from mura_lightning.evaluation.outputs import write_scored_test, write_submission
from mura_lightning.evaluation.tables import print_metrics_table
from mura_lightning.inference.checkpoints import check_checkpoints, checkpoint_paths, datamodule_settings
from mura_lightning.inference.device import choose_device
from mura_lightning.inference.files import predict_files
from mura_lightning.inference.model import InferenceModel
from mura_lightning.io import RESULTS_FILE, write_atomically, write_json_atomic
from mura_lightning.reporting.build import ReportSettings
from mura_lightning.reporting.write import write_report

log = logging.getLogger(__name__)

STAGE = "test"
TEST_SPLIT = "valid"
FIGURES = ("confusion_matrix", "roc", "reliability")
FIGURE_DPI = 120
SHOWN_UNREADABLE = 5


def valid_split_rows(ckpt_path: str, cfg: DictConfig) -> tuple[Path, list[str], pd.DataFrame]:
    """The MURA root, body parts and index rows of the official valid split to score: data.root and bodypart
    when given, else what the checkpoint was trained on. Only the valid split is read."""
    trained_on = datamodule_settings(ckpt_path)
    root = cfg.data.root or trained_on.get("root")
    if root is None:
        raise MuraError(f"{ckpt_path} does not say which data it was trained on: pass data.root=/path/to/MURA-v1.1")
    tried = Path(root).expanduser().absolute()
    if not cfg.data.root and not tried.is_dir():
        raise MuraError(
            f"{ckpt_path} was trained on data.root={root}, which is not there (looked for {tried}): pass "
            "data.root=/path/to/MURA-v1.1, the folder holding its valid/ split"
        )
    body_parts = list(cfg.bodypart) if cfg.get("bodypart") else trained_on.get("body_parts") or "all"
    index = build_index(root, on_error=cfg.data.on_error, splits=(TEST_SPLIT,))
    rows = select_body_parts(index.frame, body_parts)
    rows = rows.assign(image_id=range(len(rows)), study_id=pd.factorize(rows["study"], sort=True)[0])
    return index.root, sorted(rows["body_part"].unique()), rows


def readable_table(rows: pd.DataFrame, probs) -> PredictionTable:
    """The prediction table of the rows (images, or one row per study) whose probability is known."""
    kept = rows.assign(prob=probs).dropna(subset=["prob"])
    part_index = {part: i for i, part in enumerate(BODY_PARTS)}
    return PredictionTable(
        probs=torch.tensor(kept["prob"].to_numpy(), dtype=torch.float32),
        labels=torch.tensor(kept["label"].to_numpy(), dtype=torch.float32),
        studies=torch.tensor(kept["study_id"].to_numpy()),
        body_parts=torch.tensor(kept["body_part"].map(part_index).to_numpy()),
        image_ids=torch.tensor(kept["image_id"].to_numpy()),
    )


def study_table(rows: pd.DataFrame, study_probs) -> PredictionTable:
    """The prediction table of the studies with a probability (`study_probs`, indexed by study id), one row per
    study holding its first image's id."""
    studies = rows.sort_values("image_id").drop_duplicates("study_id").sort_values("study_id")
    return readable_table(studies, study_probs[studies["study_id"].to_numpy()])


def write_outputs(
    out: Path,
    values: dict,
    tables: dict[str, PredictionTable],
    rows,
    root: Path,
    model: InferenceModel,
    settings: BootstrapSettings,
) -> dict:
    """The prediction files, per-body-part tables with bootstrap intervals, results.json, submission.csv and the
    figures; returns the values with the intervals."""
    threshold = model.part_thresholds()
    values, study_frame = write_scored_test(out, values, tables, rows, threshold, settings, STAGE)
    write_json_atomic(out / RESULTS_FILE, values)
    write_submission(
        out / "submission.csv", [f"{root.name}/{study}" for study in study_frame["study"]], study_frame["pred"]
    )
    for name, figure in figures(tables["study"], threshold, f"{values['model']} study").items():
        if name in FIGURES:
            write_atomically(out / f"{name}.png", partial(save_png, figure))
        plt.close(figure)
    return values


def save_png(figure: plt.Figure, path: Path) -> None:
    """Write a matplotlib figure as a PNG."""
    figure.savefig(path, format="png", dpi=FIGURE_DPI)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score the checkpoint(s) on the official valid split; write the outputs into the run folder."""
    settings = BootstrapSettings.from_config(OmegaConf.to_container(cfg.metrics.bootstrap))
    paths = checkpoint_paths(cfg.ckpt_path)
    model = InferenceModel.from_checkpoints(
        paths,
        threshold=cfg.threshold,
        pooling=OmegaConf.select(cfg, "model.pooling.name"),
        tta=cfg.tta,
        tta_degrees=cfg.tta_degrees,
    ).to(choose_device(cfg.device))
    root, body_parts, rows = valid_split_rows(paths[0], cfg)
    result = predict_files(
        model,
        rows["path"].tolist(),
        studies=rows["study_id"].to_numpy(),
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
    )
    if result.failed:
        unreadable = "\n  ".join([error for error in result.errors if error][:SHOWN_UNREADABLE])
        if cfg.data.on_error != "skip":
            raise MuraError(
                f"{result.failed} images could not be read:\n  {unreadable}\nReplace or remove them, or set "
                "data.on_error=skip to score without them."
            )
        log.warning(
            "%d images could not be read and are left out (data.on_error=skip):\n  %s", result.failed, unreadable
        )
    images = readable_table(rows, result.probs)
    if not len(images):
        raise MuraError(f"no image of the {TEST_SPLIT} split under {root} could be read")
    tables = {"image": images, "study": study_table(rows, result.study_probs)}
    values = StageMetrics().score(STAGE, tables, model.part_thresholds())
    description = model.describe()
    values.update(
        {
            **description,
            "body_parts": body_parts,
            "data_root": str(root),
            "unreadable_images": result.failed,
            f"{STAGE}/threshold": model.threshold,
        }
    )
    out = Path(cfg.paths.output_dir)
    values = write_outputs(out, values, tables, rows, root, model, settings)
    print_metrics_table(values, STAGE)
    if cfg.report:
        write_report(out, ReportSettings.from_config(cfg.reporting))
    log.info("evaluation written to %s", out)
    return values


@hydra_app("evaluate", check=check_checkpoints)
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
