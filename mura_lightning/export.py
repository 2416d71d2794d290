"""`python -m mura_lightning.export ckpt_path=FILE format=onnx|torchscript [output=PATH] [opset=17] [batch_size=2]`:
a checkpoint's model as an ONNX or TorchScript file, with a JSON sidecar saying how to feed it.

The exported model maps a normalised batch (N, C, S, S) to abnormality probabilities (N,) for any N: it is
`InferenceModel.forward` (with its test-time augmentation, `tta=`). A model with a study pooling (or an ensemble with
such a member) is exported as `InferenceModel.score` of one study instead: the study's views (V, C, S, S), any V,
in; the study's probability (1,) and the views' weights (V,) out. Both formats are traced, so it runs on any batch
size but on the image size it was trained with. ONNX uses torch's TorchScript-based exporter (`dynamo=False`): it
writes opsets 11 to 20 in about a second, where the torch.export-based one (torch 2.14) takes over ten seconds even
for a 32 px DenseNet-169 and cannot lower its graph below opset 18.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from mura_lightning.cli import hydra_app
from mura_lightning.errors import MuraError
from mura_lightning.inference.model import DEFAULT_TTA_DEGREES, InferenceModel
from mura_lightning.io import write_atomically, write_json_atomic
from mura_lightning.models.segments import OneStudy

log = logging.getLogger(__name__)

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_OPSET, DEFAULT_BATCH_SIZE = 17, 2  # as in conf/export.yaml
MIN_OPSET, MAX_OPSET = 11, 20  # 11: first with a dynamic batch axis for this graph; 20: the exporter's newest
ROTATION_OPSET = 20  # the first ONNX opset with AffineGrid, which tta=hflip_rotate needs
# Warnings about the exporters themselves, which this module picks knowingly (see the module docstring).
EXPORTER_WARNINGS = (
    r"`torch\.jit\.(trace|save)",
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed\. Please remove usage of this function",
)
PREPROCESSING = (
    "read each radiograph as one grayscale channel, resize it to image_size x image_size (antialiased), scale it "
    "to [0, 1], copy it to in_chans channels and normalise channel c as (x - mean[c]) / std[c]"
)


@dataclass(frozen=True)
class Signature:
    """What an exported model takes and gives: its input, its outputs with their shapes (names of dynamic axes or
    sizes), and what each output holds."""

    input_name: str
    axis: str
    outputs: dict[str, list]
    meaning: dict[str, str]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The ONNX exporter's dynamic axes: the first axis of the input and of the outputs that follow it."""
        outputs = {name: {0: self.axis} for name, shape in self.outputs.items() if shape == [self.axis]}
        return {self.input_name: {0: self.axis}, **outputs}


IMAGES = Signature(
    "images",
    "batch",
    {"probabilities": ["batch"]},
    {
        "probabilities": "the probability that each image is abnormal: sigmoid(logit / temperature), the mean over the "
        "tta views"
    },
)
STUDY = Signature(
    "views",
    "views",
    {"probability": [1], "weights": ["views"]},
    {
        "probability": "the probability that the study whose views were given is abnormal: sigmoid(study logit / "
        "temperature) of the model's study pooling, the mean over the tta views",
        "weights": "each view's weight in the study's score (they sum to 1): which view drove the decision",
    },
)


class StudyScore(nn.Module):
    """The views of one study (V, C, S, S) -> the study's probability (1,) and the views' weights (V,): what is
    exported for a model with a study pooling."""

    def __init__(self, model: InferenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.model.score(views, OneStudy())
        return scores.study_probs, scores.weights


def check_settings(ckpt_path: Any, fmt: str, opset: int, batch_size: int, tta: str = "none") -> None:
    """Raise a MuraError naming the first setting that cannot be exported with."""
    if ckpt_path is None:
        raise MuraError("no checkpoint given: pass ckpt_path=FILE, e.g. a .ckpt from <run>/checkpoints/")
    if fmt not in SUFFIXES:
        raise MuraError(f"format={fmt!r} is not one of: {', '.join(SUFFIXES)}")
    if fmt == "onnx":
        check_onnx(opset)
        if tta == "hflip_rotate" and opset < ROTATION_OPSET:
            raise MuraError(
                f"tta=hflip_rotate in ONNX needs opset={ROTATION_OPSET} or later (its rotations use AffineGrid); "
                f"opset={opset} was asked for"
            )
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise MuraError(f"batch_size={batch_size!r} must be a whole number of images, at least 1")


def check_onnx(opset: int) -> None:
    """Raise a MuraError when the onnx package is missing or `opset` is one the exporter cannot write."""
    if importlib.util.find_spec("onnx") is None:
        raise MuraError("format=onnx needs the onnx package: pip install 'mura-lightning[onnx]' (or pip install onnx)")
    if not (isinstance(opset, int) and MIN_OPSET <= opset <= MAX_OPSET):
        raise MuraError(f"opset={opset!r} is not an ONNX opset this exporter writes: choose {MIN_OPSET} to {MAX_OPSET}")


def output_path(ckpt_path: Path, fmt: str, output: str | Path | None = None) -> Path:
    """Where the model goes: `output` (with the format's suffix added when it lacks it), or next to the checkpoint
    with the format's suffix; never the checkpoint."""
    suffix = SUFFIXES[fmt]
    if output is None:
        path = ckpt_path.with_suffix(suffix)
    else:
        path = Path(output).expanduser()
        if not path.name.endswith(suffix):
            path = path.with_name(path.name + suffix)
    if path.resolve() == ckpt_path.resolve():
        raise MuraError(f"output={path} is the checkpoint itself; pass another file name")
    return path


def sidecar_path(model_path: Path) -> Path:
    """The JSON sidecar of an exported model: `<model file>.json`."""
    return model_path.with_name(model_path.name + ".json")


def describe(model: InferenceModel, ckpt_path: Path, model_path: Path, fmt: str, opset: int) -> dict[str, Any]:
    """The sidecar: what the exported model takes and returns, and how to turn its output into decisions."""
    preprocessing = model.preprocessing
    in_chans, size = preprocessing.in_chans, preprocessing.image_size
    signature = STUDY if model.pools_studies else IMAGES
    poolings = "+".join(model.poolings)
    study = (
        "the output probability is the study's"
        if model.pools_studies
        else f"a study's probability is the {'mean' if poolings == 'mean_prob' else 'max'} of its images' probabilities"
    )
    return {
        "format": fmt,
        "file": model_path.name,
        **({"opset": opset} if fmt == "onnx" else {}),
        "checkpoint": str(ckpt_path.resolve()),
        "backbone": model.names[0],
        "input_name": signature.input_name,
        "input_shape": [signature.axis, in_chans, size, size],
        "input_dtype": "float32",
        "image_size": size,
        "in_chans": in_chans,
        "mean": preprocessing.channel_mean,
        "std": preprocessing.channel_std,
        "preprocessing": PREPROCESSING,
        "tta": model.tta.mode,
        "tta_degrees": model.tta.degrees,
        "output_names": list(signature.outputs),
        "output_shapes": signature.outputs,
        "outputs": signature.meaning,
        "temperature": model.temperatures[0],
        "pooling": poolings,
        "study": study,
        "threshold": model.threshold,
        "thresholds": model.thresholds,
        "decision": "a study (or image) is abnormal when its probability is above its body part's entry of "
        "thresholds, or threshold when thresholds is null or lacks the part",
    }


@contextmanager
def exporter_warnings_silenced() -> Iterator[None]:
    """Hide the exporters' warnings about their own deprecation."""
    with warnings.catch_warnings():
        for message in EXPORTER_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


def save_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int, signature: Signature) -> None:
    """Write `model` as ONNX with a dynamic batch (or views) axis."""
    with exporter_warnings_silenced():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[signature.input_name],
            output_names=list(signature.outputs),
            dynamic_axes=signature.dynamic_axes(),
            opset_version=opset,
            dynamo=False,
        )


def save_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Write `model` traced to TorchScript (without torch's trace check, which re-runs the model twice; the
    outputs are compared with PyTorch's in tests/test_export.py)."""
    with exporter_warnings_silenced():
        torch.jit.save(torch.jit.trace(model, (example,), check_trace=False), str(path))


def export(
    ckpt_path: str | Path,
    fmt: str = "onnx",
    output: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    batch_size: int = DEFAULT_BATCH_SIZE,
    tta: str = "none",
    tta_degrees: float = DEFAULT_TTA_DEGREES,
) -> Path:
    """Export a checkpoint's model (normalised batch -> probabilities; with a study pooling, one study's views ->
    its probability and the view weights) as `fmt` to `output` (default: next to the checkpoint) and write its
    sidecar `<output>.json`; returns the model's path."""
    check_settings(ckpt_path, fmt, opset, batch_size, tta)
    ckpt_path = Path(ckpt_path).expanduser()
    path = output_path(ckpt_path, fmt, output)
    model = InferenceModel.from_checkpoints(str(ckpt_path), tta=tta, tta_degrees=tta_degrees)
    size = model.preprocessing.image_size
    example = torch.zeros(batch_size, model.preprocessing.in_chans, size, size)
    signature, exported = (STUDY, StudyScore(model)) if model.pools_studies else (IMAGES, model)
    if fmt == "onnx":
        write_atomically(path, lambda tmp: save_onnx(exported, example, tmp, opset, signature))
    else:
        write_atomically(path, lambda tmp: save_torchscript(exported, example, tmp))
    write_json_atomic(sidecar_path(path), describe(model, ckpt_path, path, fmt, opset))
    return path


@hydra_app("export")
def main(cfg: DictConfig) -> None:
    """Export cfg.ckpt_path and say where the model and its sidecar are."""
    path = export(cfg.ckpt_path, cfg.format, cfg.output, cfg.opset, cfg.batch_size, cfg.tta, cfg.tta_degrees)
    log.info("wrote %s and %s", path, sidecar_path(path))


if __name__ == "__main__":
    main()
