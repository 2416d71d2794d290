"""`python -m mura_lightning.predict ckpt_path=FILE input=PATH output=DIR [cam=true]`: probabilities for new
radiographs, per image and per study, with optional CAM overlays."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mura_lightning.checkpoints import load_classifier
from mura_lightning.data.images import ImageDecodeError, read_grayscale
from mura_lightning.data.index import body_part_of, folder_label, is_dataset_image
from mura_lightning.data.transforms import RadiographTransform
from mura_lightning.errors import MuraError, exit_on_user_error
from mura_lightning.evaluate import write_submission
from mura_lightning.explain import compute_cams, overlay
from mura_lightning.io import write_atomically
from mura_lightning.models.module import MURAClassifier

log = logging.getLogger(__name__)

IMAGE_PATHS_SUFFIX = "_image_paths.csv"
COLUMNS = ["level", "path", "study", "body_part", "label", "prob", "pred", "error"]
CAM_FOLDER = "cams"


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


def collect_inputs(source: Path) -> tuple[list[Radiograph], bool]:
    """The radiographs of `source` (an image, a study folder, a folder of studies, or an `*_image_paths.csv`
    whose rows are relative to the parent of the dataset folder), and whether it was such a CSV."""
    if not source.exists():
        raise MuraError(
            f"input={source} does not exist: give an image, a study folder, a folder of studies or an "
            f"*{IMAGE_PATHS_SUFFIX}"
        )
    if source.is_file() and source.name.endswith(IMAGE_PATHS_SUFFIX):
        base = source.parent.parent
        rows = [line.strip() for line in source.read_text().splitlines() if line.strip()]
        return [_describe(base / row, row) for row in rows if is_dataset_image(Path(row).name)], True
    if source.is_file():
        return [_describe(source, f"{source.parent.name}/{source.name}")], False
    files = sorted(path for path in source.rglob("*") if path.is_file() and is_dataset_image(path.name))
    if not files:
        raise MuraError(f"input={source} holds no PNG radiographs")
    return [_describe(path, path.relative_to(source.parent).as_posix()) for path in files], False


class RadiographFiles(Dataset):
    """Decoded, resized and normalised inputs; a file that cannot be decoded yields its error instead."""

    def __init__(self, radiographs: list[Radiograph], transform: RadiographTransform) -> None:
        self.radiographs = radiographs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.radiographs)

    def __getitem__(self, index: int) -> dict:
        size = self.transform.image_size
        try:
            resized = self.transform.resize(read_grayscale(self.radiographs[index].file))
        except ImageDecodeError as err:
            empty = torch.zeros(self.transform.in_chans, size, size)
            return {
                "index": index,
                "ok": False,
                "error": str(err),
                "pixels": torch.zeros(1, size, size, dtype=torch.uint8),
                "input": empty,
            }
        return {"index": index, "ok": True, "error": "", "pixels": resized, "input": self.transform.normalize(resized)}


def choose_device(name: str) -> torch.device:
    """`auto` picks CUDA when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def predict(cfg: DictConfig) -> pd.DataFrame:
    """Predict every radiograph of cfg.input; write predictions.csv (and CAMs, submission.csv) to cfg.output."""
    model = load_classifier(cfg.ckpt_path)
    device = choose_device(cfg.device)
    model.to(device)
    radiographs, from_csv = collect_inputs(Path(cfg.input).expanduser())
    out = Path(cfg.output).expanduser()
    loader = DataLoader(
        RadiographFiles(radiographs, model.eval_transform()), batch_size=cfg.batch_size, num_workers=cfg.num_workers
    )
    probs = np.full(len(radiographs), np.nan)
    errors = [""] * len(radiographs)
    for batch in loader:
        ok = batch["ok"]
        for index, error in zip(batch["index"].tolist(), batch["error"], strict=True):
            errors[index] = error
        if not ok.any():
            continue
        inputs = batch["input"][ok].to(device)
        with torch.no_grad():
            probs[batch["index"][ok].numpy()] = model.probabilities(model(inputs)).cpu().numpy()
        if cfg.cam:
            write_cams(
                model, inputs, batch["pixels"][ok], [radiographs[i] for i in batch["index"][ok].tolist()], out, cfg
            )
    threshold = cfg.threshold if cfg.threshold is not None else float(model.tuned_threshold)
    table = prediction_table(radiographs, probs, errors, threshold, cfg.study_aggregation or model.study_aggregation)
    write_atomically(out / "predictions.csv", lambda tmp: table.to_csv(tmp, index=False))
    if from_csv:
        studies = table[(table["level"] == "study") & (table["error"] == "")]
        write_submission(out / "submission.csv", studies["path"], studies["pred"])
    failed = sum(1 for error in errors if error)
    log.info("%d images predicted, %d could not be read; written to %s", len(radiographs) - failed, failed, out)
    return table


def prediction_table(radiographs, probs, errors, threshold: float, aggregation: str) -> pd.DataFrame:
    """Image rows, then one row per study (its images' mean or max probability); labels where paths carry them."""
    images = pd.DataFrame(
        {
            "level": "image",
            "path": [r.name for r in radiographs],
            "study": [r.study for r in radiographs],
            "body_part": [r.body_part for r in radiographs],
            "label": pd.array([r.label for r in radiographs], dtype="Int64"),
            "prob": probs,
            "pred": pd.array([None if np.isnan(p) else int(p > threshold) for p in probs], dtype="Int64"),
            "error": errors,
        }
    )
    if aggregation not in ("mean", "max"):
        raise MuraError(f"study_aggregation={aggregation!r} is not one of mean, max")
    studies = (
        images.groupby("study", sort=False)
        .agg(body_part=("body_part", "first"), label=("label", "first"), prob=("prob", aggregation))
        .reset_index()
    )
    studies["level"], studies["path"] = "study", studies["study"]
    studies["pred"] = pd.array([None if np.isnan(p) else int(p > threshold) for p in studies["prob"]], dtype="Int64")
    studies["error"] = ["" if not np.isnan(p) else "no image of the study could be read" for p in studies["prob"]]
    return pd.concat([images, studies[COLUMNS]], ignore_index=True)[COLUMNS]


def write_cams(
    model: MURAClassifier, inputs, pixels, radiographs: list[Radiograph], out: Path, cfg: DictConfig
) -> None:
    """A CAM overlay PNG per image, named after its path."""
    cams = compute_cams(model.net, model.cam_target_layer(), inputs, cfg.cam_method)
    for cam, gray, radiograph in zip(cams, pixels[:, 0].numpy(), radiographs, strict=True):
        picture = Image.fromarray(overlay(gray, cam, cfg.cam_image_weight))
        name = radiograph.name.replace("/", "__")
        write_atomically(out / CAM_FOLDER / name, lambda tmp, p=picture: p.save(tmp, format="PNG"))


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    predict(cfg)


if __name__ == "__main__":
    main()
