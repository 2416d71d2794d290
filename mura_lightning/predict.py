"""`python -m mura_lightning.predict ckpt_path=FILE input=PATH output=DIR [cam=true] [tta=hflip]`: probabilities
for new radiographs (PNG, JPEG or DICOM), per image and per study (a study: the images of one folder), with each
image's weight in its study's score and optional CAM overlays. `predictions.csv` names each file by its path (and a
DICOM by its SOP Instance UID); nothing else is taken from DICOM headers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from mura_lightning.cli import hydra_app
from mura_lightning.data.dicom import is_dicom, sop_instance_uid
from mura_lightning.data.images import RADIOGRAPH_KINDS, ImageDecodeError, is_radiograph, read_grayscale
from mura_lightning.data.index import body_part_of, folder_label
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.outputs import write_submission
from mura_lightning.inference.device import choose_device
from mura_lightning.inference.explain import batch_cams, overlay
from mura_lightning.inference.files import FilePredictions, predict_files
from mura_lightning.inference.model import InferenceModel
from mura_lightning.io import write_atomically

log = logging.getLogger(__name__)

IMAGE_PATHS_SUFFIX = "_image_paths.csv"
COLUMNS = ["level", "path", "sop_instance_uid", "study", "body_part", "label", "prob", "pred", "weight", "error"]
CAM_FOLDER = "cams"
SHOWN_UNREADABLE = 5  # unreadable files named in the message when none could be read


@dataclass(frozen=True)
class Radiograph:
    """One input image: its file, how it is named in the outputs, its study, and what its path says."""

    file: Path
    name: str
    study: str
    body_part: str
    label: int | None


def _describe(file: Path, name: str) -> Radiograph:
    study = str(Path(name).parent)
    parts = [body_part_of(part) for part in Path(name).parts + file.parts]
    return Radiograph(file, name, study, next((p for p in parts if p), ""), folder_label(file.parent.name))


def collect_inputs(given: Path) -> tuple[list[Radiograph], bool]:
    """The radiographs of `given` (an image, a study folder, a folder of studies, or an `*_image_paths.csv`
    whose rows are relative to the parent of the dataset folder), and whether it was such a CSV. A radiograph is
    what `is_radiograph` says, for a file given alone as for the files of a folder or a CSV."""
    if not given.exists():
        raise MuraError(
            f"input={given} does not exist: give an image, a study folder, a folder of studies or an "
            f"*{IMAGE_PATHS_SUFFIX}"
        )
    source = given.absolute()
    if source.is_file() and source.name.endswith(IMAGE_PATHS_SUFFIX):
        base = source.parent.parent
        rows = [line.strip() for line in source.read_text().splitlines() if line.strip()]
        radiographs = [_describe(base / row, row) for row in rows if is_radiograph(base / row)]
        if not radiographs:
            raise MuraError(f"input={given} lists no {RADIOGRAPH_KINDS} files")
        return radiographs, True
    if source.is_file():
        if not is_radiograph(source):
            raise MuraError(
                f"input={given} is not a radiograph: give a {RADIOGRAPH_KINDS} file, a study folder, a folder of "
                f"studies or an *{IMAGE_PATHS_SUFFIX}"
            )
        return [_describe(source, f"{source.parent.name}/{source.name}")], False
    files = sorted(path for path in source.rglob("*") if path.is_file() and is_radiograph(path))
    if not files:
        raise MuraError(f"input={given} holds no radiographs ({RADIOGRAPH_KINDS} files)")
    return [_describe(path, path.relative_to(source.parent).as_posix()) for path in files], False


def check_studies(radiographs: list[Radiograph], source: Path) -> None:
    """Refuse an input whose images cannot be told apart into studies for a study pooling: a folder holding
    radiographs both loose and in subfolders (the loose ones would make one study of unrelated images)."""
    folders = {Path(r.study) for r in radiographs}
    nested = sorted(str(folder) for folder in folders if any(folder in other.parents for other in folders))
    if nested:
        raise MuraError(
            f"input={source}: {nested[0]} holds radiographs of its own and in its subfolders, so its views cannot be "
            "grouped into studies; a study pooling scores each folder's radiographs as one study: put each study's "
            "views in a folder of their own (MURA's patientNNNNN/studyN/), or predict one study folder at a time"
        )


def load_model(cfg: DictConfig) -> InferenceModel:
    """The inference model of cfg.ckpt_path with the threshold, pooling, TTA and device of cfg (predict's and
    serve's settings), on its device."""
    return InferenceModel.from_checkpoints(
        cfg.ckpt_path,
        threshold=cfg.threshold,
        pooling=OmegaConf.select(cfg, "model.pooling.name"),
        tta=cfg.tta,
        tta_degrees=cfg.tta_degrees,
    ).to(choose_device(cfg.device))


def predict(cfg: DictConfig) -> pd.DataFrame:
    """Predict every radiograph of cfg.input; write predictions.csv (and CAMs, submission.csv) to cfg.output."""
    model = load_model(cfg)
    source = Path(cfg.input).expanduser()
    radiographs, from_csv = collect_inputs(source)
    if model.pools_studies:
        check_studies(radiographs, source)
    out = Path(cfg.output).expanduser()
    cams = CamWriter(model, radiographs, out, cfg) if cfg.cam else None
    result = predict_files(
        model,
        [r.file for r in radiographs],
        studies=pd.factorize(pd.Series([r.study for r in radiographs]))[0],
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        on_batch=cams,
    )
    if result.failed == len(radiographs):
        more = f" (and {result.failed - SHOWN_UNREADABLE} more)" if result.failed > SHOWN_UNREADABLE else ""
        raise MuraError(f"no input could be read: {'; '.join(result.errors[:SHOWN_UNREADABLE])}{more}")
    table = prediction_table(radiographs, result, model.threshold_of)
    write_atomically(out / "predictions.csv", lambda tmp: table.to_csv(tmp, index=False))
    if from_csv:
        studies = table[(table["level"] == "study") & (table["error"] == "")]
        write_submission(out / "submission.csv", studies["path"], studies["pred"])
    log.info(
        "%d images predicted, %d could not be read; written to %s", len(radiographs) - result.failed, result.failed, out
    )
    return table


def dicom_uid(file: Path) -> str:
    """The SOP Instance UID of a DICOM input ("" for other files, and for DICOMs without one or unreadable)."""
    if not is_dicom(file):
        return ""
    try:
        return sop_instance_uid(file) or ""
    except ImageDecodeError:
        return ""


def _decisions(probs: np.ndarray, parts, threshold_of: Callable[[str], float]) -> pd.arrays.IntegerArray:
    return pd.array(
        [None if np.isnan(p) else int(p > threshold_of(part)) for p, part in zip(probs, parts, strict=True)],
        dtype="Int64",
    )


def prediction_table(radiographs, result: FilePredictions, threshold_of: Callable[[str], float]):
    """Image rows, then one row per study (the model's study probability); labels where paths carry them. `pred` of
    a row is decided at `threshold_of(body_part)` ("" for radiographs whose path names no body part); `weight` is an
    image's share in its study's score (which view drove the decision), empty on study rows."""
    probs = result.probs
    images = pd.DataFrame(
        {
            "level": "image",
            "path": [r.name for r in radiographs],
            "sop_instance_uid": [dicom_uid(r.file) for r in radiographs],
            "study": [r.study for r in radiographs],
            "body_part": [r.body_part for r in radiographs],
            "label": pd.array([r.label for r in radiographs], dtype="Int64"),
            "prob": probs,
            "pred": _decisions(probs, [r.body_part for r in radiographs], threshold_of),
            "weight": result.weights,
            "error": result.errors,
        }
    )
    studies = images.drop_duplicates("study").reset_index(drop=True)
    studies["level"], studies["path"], studies["prob"] = "study", studies["study"], result.study_probs
    studies["sop_instance_uid"], studies["weight"] = "", np.nan
    studies["pred"] = _decisions(studies["prob"].to_numpy(), studies["body_part"], threshold_of)
    studies["error"] = ["" if not np.isnan(p) else "no image of the study could be read" for p in studies["prob"]]
    return pd.concat([images, studies[COLUMNS]], ignore_index=True)[COLUMNS]


class CamWriter:
    """Writes a CAM overlay PNG per readable image (named after its path) of the ensemble's first network, over
    the radiograph at its own size (the map stretched back from the model's input size): for a study pooling,
    Grad-CAM of the study's logit on each of its views (see `study_cams`)."""

    def __init__(self, model: InferenceModel, radiographs: list[Radiograph], out: Path, cfg: DictConfig) -> None:
        self.net = model.members()[0]
        self.layer = model.cam_target_layers()[0]
        self.radiographs = radiographs
        self.folder = out / CAM_FOLDER
        self.method = cfg.cam_method
        self.image_weight = cfg.cam_image_weight

    def __call__(self, batch: dict, probs: torch.Tensor) -> None:
        cams = batch_cams(self.net, self.layer, batch["input"], batch["study"], self.method)
        for cam, index in zip(cams, batch["index"].tolist(), strict=True):
            radiograph = self.radiographs[index]
            picture = Image.fromarray(overlay(read_grayscale(radiograph.file), cam, self.image_weight))
            name = radiograph.name.replace("/", "__")
            write_atomically(self.folder / name, lambda tmp, p=picture: p.save(tmp, format="PNG"))


@hydra_app("predict")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    predict(cfg)


if __name__ == "__main__":
    main()
