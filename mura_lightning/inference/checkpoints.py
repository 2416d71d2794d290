"""Loading trained MURAClassifier checkpoints safely: tensors and plain data only, clear errors."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mura_lightning.data.index import resolve_body_parts
from mura_lightning.errors import MuraError
from mura_lightning.models.backbones import state_dict_mismatch
from mura_lightning.models.module import MURAClassifier, fill_missing_buffers, pooling_of

BEST_CHECKPOINTS = "**/checkpoints/best*.ckpt"  # what a run keeps as its best (conf/callbacks: model_checkpoint)


class CheckpointError(MuraError):
    """A checkpoint that is missing, damaged, or not one this project wrote."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint file's contents, loaded with `weights_only=True` (no code from the pickle runs)."""
    path = require_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is damaged (cut off while copying?) or holds objects that are "
            f"not plain data ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "backbone" not in hparams or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a mura-lightning checkpoint (it has no model hyperparameters)")
    return checkpoint


def require_file(path: str | Path) -> Path:
    """`path` when it is a file; a CheckpointError saying where checkpoints are when it is not."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path} does not exist; pass a .ckpt from <run>/checkpoints/")
    return path


def load_classifier(path: str | Path, expected_backbone: str | None = None) -> MURAClassifier:
    """The MURAClassifier of a checkpoint, rebuilt from its saved hyperparameters (without downloading
    ImageNet weights or compiling) and its weights, in eval mode on the CPU.

    `expected_backbone`, when given, must be the checkpoint's backbone. Weights that do not fit the saved
    backbone are a CheckpointError naming the keys, not a torch traceback. Checkpoints from before calibration and
    per-body-part thresholds load with a temperature of 1 and their global threshold for every part.
    """
    checkpoint = read_checkpoint(path)
    hparams = upgrade_hyperparameters(checkpoint["hyper_parameters"])
    name = hparams["backbone"].get("name")
    if expected_backbone is not None and name != expected_backbone:
        raise CheckpointError(f"{path} holds a {name} model, not the {expected_backbone} asked for")
    hparams["backbone"] = {**hparams["backbone"], "pretrained": False}
    hparams["compile"] = False
    model = MURAClassifier(**hparams)
    state = fill_missing_buffers(checkpoint["state_dict"])
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"the weights in {path} do not fit its {name} model: {mismatch}")
    model.load_state_dict(state)
    return model.eval()


def upgrade_hyperparameters(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model hyperparameters in today's form: checkpoints written before preprocessing owned
    `in_chans` kept it in `backbone`, and a `cam_layer` that now comes with the backbone; those written before the
    pooling group held `study_aggregation` (mean or max), now the image pooling mean_prob or max_prob."""
    hparams = {key: value for key, value in saved.items() if key not in ("cam_layer", "study_aggregation")}
    hparams["pooling"] = pooling_of(saved)
    backbone = dict(hparams["backbone"])
    in_chans = backbone.pop("in_chans", None)
    if in_chans is not None:
        hparams["preprocessing"] = {**hparams["preprocessing"], "in_chans": in_chans}
    hparams["backbone"] = backbone
    return hparams


def checkpoint_paths(value: Any) -> list[str]:
    """`ckpt_path` as a list of checkpoint files: one file; a list (an ensemble); a folder, standing for every
    best checkpoint under it (BEST_CHECKPOINTS: a sweep's fold models, say); or a glob pattern. Each entry of a
    list may be any of these."""
    entries = [value] if isinstance(value, (str, Path)) else list(value or [])
    if not entries:
        raise CheckpointError("ckpt_path names no checkpoint: pass ckpt_path=FILE, a sweep folder or [FILE,FILE,...]")
    return [path for entry in entries for path in _expand(str(entry))]


def _expand(entry: str) -> list[str]:
    """The checkpoint files one `ckpt_path` entry stands for (see checkpoint_paths)."""
    path = Path(entry).expanduser()
    if path.is_dir():
        found = sorted(str(file) for file in path.glob(BEST_CHECKPOINTS))
        if not found:
            raise CheckpointError(
                f"ckpt_path={entry} is a folder without best checkpoints ({BEST_CHECKPOINTS} under it); pass a run "
                "or sweep folder whose runs finished an epoch, or a .ckpt file"
            )
        return found
    if glob.has_magic(entry):
        found = sorted(glob.glob(str(path), recursive=True))
        if not found:
            raise CheckpointError(f"ckpt_path={entry} matches no file")
        return found
    return [entry]


def check_checkpoints(cfg: DictConfig) -> None:
    """Every checkpoint `cfg.ckpt_path` stands for exists (see `checkpoint_paths`), else a CheckpointError: an
    entry point's check before its run folder is made."""
    for path in checkpoint_paths(cfg.ckpt_path):
        require_file(path)


def trained_body_parts(paths: Sequence[str]) -> list[str] | None:
    """The body parts the checkpoints were trained on (None when none of them says); members of an ensemble
    trained on different body parts are a CheckpointError listing each part's members as a `ckpt_path`."""
    members: dict[tuple[str, ...], list[str]] = {}
    for path in paths:
        saved = datamodule_settings(path).get("body_parts")
        if saved:
            members.setdefault(tuple(resolve_body_parts(saved)), []).append(path)
    if len(members) > 1:
        listing = "; ".join(f"{','.join(parts)}: ckpt_path=[{','.join(group)}]" for parts, group in members.items())
        raise CheckpointError(
            f"the members of an ensemble must be trained on the same body parts; these were not: {listing} "
            "(evaluate or predict each part's members on their own)"
        )
    return list(next(iter(members))) if members else None


def datamodule_settings(path: str | Path) -> dict[str, Any]:
    """The MURADataModule arguments a checkpoint was trained with (empty for checkpoints without them)."""
    return dict(read_checkpoint(path).get("datamodule_hyper_parameters") or {})
