"""InferenceModel: one or several trained networks with their preprocessing, test-time augmentation, threshold
and study pooling, as one torch module."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from mura_lightning.data.images import read_grayscale, to_grayscale
from mura_lightning.data.index import BODY_PARTS
from mura_lightning.data.presets import EvalPreset, Preprocessing
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.thresholds import threshold_in_force
from mura_lightning.inference.checkpoints import checkpoint_paths, load_classifier, trained_body_parts
from mura_lightning.inference.tta import TestTimeAugmentation
from mura_lightning.models.backbones import cam_target_layer
from mura_lightning.models.module import MURAClassifier
from mura_lightning.models.pooling import IMAGE_POOLINGS, StudyScores, ViewOutputs, build_pooling
from mura_lightning.models.segments import OneStudy, Segments
from mura_lightning.models.study_network import StudyNetwork

DEFAULT_TTA_DEGREES = 10.0  # as in conf/evaluate.yaml and conf/predict.yaml

Radiograph = str | Path | Image.Image | np.ndarray


class InferenceModel(nn.Module):
    """`forward` maps a normalised batch (N, C, S, S) to abnormality probabilities (N,): the mean, over the
    networks of an ensemble and the test-time-augmentation views, of sigmoid(logit / T) in float32, with T each
    network's calibration temperature (`temperatures`, 1 for uncalibrated models); for a network with a study
    pooling, each image is scored as a study of its own. `score` takes the views of whole studies and gives, with
    those, each study's probability and each view's weight in it: each network's study pooling (`poolings`), the
    mean over networks and test-time views. `preprocess` turns a radiograph (file path, PIL image, (H, W) or
    (H, W, 3|4) uint8 array) into that normalised (C, S, S) tensor exactly as in evaluation; `predict` does both for
    a list of radiographs, `predict_study` for the views of one study. `nets` are the members, each a `MemberInput`
    (the network behind the adapter that feeds it the ensemble's input).

    `threshold` (abnormal iff probability > threshold) says how to turn the probabilities into decisions;
    `thresholds`, when not None, maps body parts to their own thresholds (`threshold_of`; parts it lacks use
    `threshold`). `describe()` says what it is made of. Build it with `from_checkpoints` (or `from_classifiers`)
    rather than by hand; Torch Hub's `mura_classifier` (hubconf.py) returns one.

    Args:
        nets: the members, each a `MemberInput`.
        preprocessing: what the model takes (image size, channels, mean and std), the first member's.
        threshold: abnormal iff probability > threshold.
        tta: test-time augmentation, `none`, `hflip` or `hflip_rotate` (the mean probability over the views).
        tta_degrees: the rotations of `hflip_rotate` (-tta_degrees and +tta_degrees).
        names: each member's backbone, for `describe()`.
        sources: each member's checkpoint, for `describe()`.
        temperatures: each member's calibration temperature (1 for uncalibrated models); None: all 1.
        thresholds: a threshold per body part, or None.

    Example:
        ```python
        from mura_lightning.inference import InferenceModel

        model = InferenceModel.from_checkpoints("outputs/train/RUN/checkpoints/best-epoch005.ckpt", tta="hflip")
        probabilities = model.predict(["image1.png", "image2.png"])  # (2,): each radiograph's probability
        study, weights = model.predict_study(["image1.png", "image2.png"])  # the two as the views of one study
        print(f"study probability {study:.3f}: {'abnormal' if study > model.threshold_of('wrist') else 'normal'}")
        ```
    """

    def __init__(
        self,
        nets: Sequence[MemberInput],
        *,
        preprocessing: Preprocessing,
        threshold: float,
        tta: str = "none",
        tta_degrees: float = DEFAULT_TTA_DEGREES,
        names: Sequence[str] = (),
        sources: Sequence[str] = (),
        temperatures: Sequence[float] | None = None,
        thresholds: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.preprocessing = preprocessing
        self.preset = EvalPreset(preprocessing=preprocessing)
        self.tta = TestTimeAugmentation(tta, tta_degrees, preprocessing)
        self.threshold = threshold
        self.thresholds = dict(thresholds) if thresholds is not None else None
        self.temperatures = [float(t) for t in temperatures] if temperatures is not None else [1.0] * len(nets)
        if len(self.temperatures) != len(nets):
            raise MuraError(f"{len(nets)} networks but {len(self.temperatures)} temperatures: give one per network")
        self.names = list(names)
        self.sources = list(sources)
        self.eval()

    @classmethod
    def from_classifiers(
        cls,
        classifiers: Sequence[MURAClassifier],
        *,
        sources: Sequence[str] = (),
        threshold: float | None = None,
        pooling: str | None = None,
        tta: str = "none",
        tta_degrees: float = DEFAULT_TTA_DEGREES,
    ) -> InferenceModel:
        """The trained classifiers as one model (sharing their networks). Members of an ensemble must take the
        same image size; the first member's preprocessing makes the input, the others get it renormalised to
        their own channels and mean/std (exactly: every channel holds the same gray image); the threshold is the
        given one, else the models' own (see `threshold_in_force`). `pooling` (mean_prob or max_prob) replaces the
        image pooling of members trained on images; a member with a study pooling keeps its own, trained into it.
        Each network keeps its own temperature; per-body-part thresholds are used for a single model tuned with
        them and no `threshold` given."""
        first = classifiers[0]
        sources = list(sources) or [""] * len(classifiers)
        for classifier, source in zip(classifiers[1:], sources[1:], strict=True):
            if classifier.preprocessing.image_size != first.preprocessing.image_size:
                raise MuraError(
                    f"the models of an ensemble must take the same image size: {source or 'a member'} takes "
                    f"{classifier.preprocessing.image_size} px, the first {first.preprocessing.image_size} px"
                )
        networks = [
            with_pooling(classifier.network(), pooling, source)
            for classifier, source in zip(classifiers, sources, strict=True)
        ]
        return cls(
            [
                MemberInput(first.preprocessing, member.preprocessing, net)
                for member, net in zip(classifiers, networks, strict=True)
            ],
            preprocessing=first.preprocessing,
            threshold=threshold_in_force(
                [float(c.tuned_threshold) for c in classifiers], first.metric_settings.threshold, threshold
            ),
            tta=tta,
            tta_degrees=tta_degrees,
            names=[classifier.hparams["backbone"]["name"] for classifier in classifiers],
            sources=[source for source in sources if source],
            temperatures=[float(classifier.temperature) for classifier in classifiers],
            thresholds=per_part_thresholds(classifiers) if threshold is None else None,
        )

    @classmethod
    def from_checkpoints(cls, ckpt_path: Any, **options: Any) -> InferenceModel:
        """The model of one checkpoint, or the ensemble of several (`ckpt_path` a path or a list of paths, whose
        members must have been trained on the same body parts), loaded with `weights_only`; `options` as for
        `from_classifiers`."""
        paths = checkpoint_paths(ckpt_path)
        trained_body_parts(paths)
        return cls.from_classifiers([load_classifier(path) for path in paths], sources=paths, **options)

    def _member_views(self, images: torch.Tensor) -> tuple[int, list[ViewOutputs]]:
        """The number of test-time views, and each member's outputs for all of them, views stacked first."""
        views = self.tta(images)
        return self.tta.num_views, [member.views(views.flatten(0, 1)) for member in self.nets]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        count, outputs = self._member_views(images)
        probs = torch.stack(
            [
                torch.sigmoid(output.logits.float() / temperature)
                for output, temperature in zip(outputs, self.temperatures, strict=True)
            ]
        )
        return probs.unflatten(1, (count, images.shape[0])).mean(dim=(0, 1))

    def score(self, images: torch.Tensor, segments: Segments) -> StudyScores:
        """View probabilities (as in `forward`), study probabilities and view weights of a batch holding whole
        studies (`segments` says which), each the mean over the members and the test-time views of what the
        member's pooling gives for that view of the studies."""
        count, outputs = self._member_views(images)
        scores = []
        for member, output, temperature in zip(self.nets, outputs, self.temperatures, strict=True):
            logits = output.logits.unflatten(0, (count, -1))
            embeddings = None if output.embeddings is None else output.embeddings.unflatten(0, (count, -1))
            for view in range(count):
                part = ViewOutputs(logits[view], None if embeddings is None else embeddings[view])
                scores.append(member.network.pooling.score(part, segments, temperature))
        return StudyScores.mean(scores)

    @property
    def poolings(self) -> list[str]:
        """Each member's study pooling (conf/pooling)."""
        return [member.network.pooling.name for member in self.nets]

    @property
    def pools_studies(self) -> bool:
        """Whether a member scores studies from their views together (a study pooling): then a study's views must
        be scored in one batch (`score`)."""
        return any(member.network.pooling.trains_on_studies for member in self.nets)

    def threshold_of(self, body_part: str) -> float:
        """The threshold of a radiograph of `body_part` (a BODY_PARTS name, or "" when unknown)."""
        return self.thresholds.get(body_part, self.threshold) if self.thresholds else self.threshold

    def part_thresholds(self) -> float | torch.Tensor:
        """`threshold`, or with per-body-part thresholds a tensor of one per BODY_PARTS entry (as
        `StageMetrics.score` takes)."""
        if not self.thresholds:
            return self.threshold
        return torch.tensor([self.threshold_of(part) for part in BODY_PARTS])

    def preprocess(self, image: Radiograph) -> torch.Tensor:
        """The normalised (C, S, S) tensor of one radiograph."""
        return self.preset(as_grayscale(image))

    @torch.no_grad()
    def predict(self, images: Sequence[Radiograph]) -> torch.Tensor:
        """Abnormality probabilities of a list of radiographs."""
        device = next(self.parameters()).device
        batch = torch.stack([self.preprocess(image) for image in images]).to(device)
        return self(batch).cpu()

    @torch.no_grad()
    def predict_study(self, views: Sequence[Radiograph]) -> tuple[float, torch.Tensor]:
        """The abnormality probability of the study whose views these radiographs are, and each view's weight in
        it (they sum to 1)."""
        device = next(self.parameters()).device
        batch = torch.stack([self.preprocess(image) for image in views]).to(device)
        scores = self.score(batch, OneStudy())
        return float(scores.study_probs[0]), scores.weights.cpu()

    def members(self) -> list[StudyNetwork]:
        """The trained networks of the model, without their input adapters."""
        return [member.network for member in self.nets]

    def cam_target_layers(self) -> list[nn.Module]:
        """Each network's layer for class activation maps (its backbone's `cam_layer`)."""
        return [cam_target_layer(net.net, name) for net, name in zip(self.members(), self.names, strict=True)]

    def describe(self) -> dict[str, Any]:
        """What the predictions come from: backbones, checkpoints, poolings, preprocessing, calibration
        temperatures, decisions (threshold, per-body-part thresholds or None) and TTA."""
        return {
            "model": "+".join(self.names),
            "models": self.names,
            "ckpt_paths": self.sources,
            "pooling": "+".join(self.poolings),
            "poolings": self.poolings,
            "preprocessing": self.preprocessing.to_dict(),
            "threshold": self.threshold,
            "thresholds": self.thresholds,
            "temperatures": self.temperatures,
            "tta": self.tta.mode,
            "tta_degrees": self.tta.degrees,
        }


def with_pooling(network: StudyNetwork, pooling: str | None, source: str) -> StudyNetwork:
    """`network`, its image pooling replaced by `pooling` (mean_prob or max_prob) when given. A network with a
    study pooling keeps it (it was trained into the network): asking for another is a MuraError."""
    if pooling is None or pooling == network.pooling.name:
        return network
    if pooling not in IMAGE_POOLINGS:
        raise MuraError(
            f"pooling={pooling} cannot be chosen at inference: a study pooling is trained into the model; here "
            f"pooling= picks {' or '.join(IMAGE_POOLINGS)} for models trained on images (or leave it null)"
        )
    if network.pooling.trains_on_studies:
        raise MuraError(
            f"{source or 'the model'} was trained with pooling={network.pooling.name}, which is part of the model: "
            f"pooling={pooling} cannot replace it; leave pooling null (its own pooling)"
        )
    return StudyNetwork(network.net, build_pooling(pooling, 0), network.head)


def per_part_thresholds(classifiers: Sequence[MURAClassifier]) -> dict[str, float] | None:
    """A single model's per-body-part thresholds by body-part name, when it was tuned with them; else None
    (an ensemble's members were tuned on their own predictions, not on the average)."""
    if len(classifiers) != 1 or not classifiers[0].metric_settings.threshold_per_body_part:
        return None
    return {part: float(value) for part, value in zip(BODY_PARTS, classifiers[0].tuned_thresholds, strict=True)}


class MemberInput(nn.Module):
    """An ensemble member fed the ensemble's input: a batch normalised with `source` is turned back into the gray
    image in [0, 1] (channel 0: x * std + mean) and normalised with the member's own `target` preprocessing;
    where both are the same the batch passes unchanged. `views` gives the member network's view outputs."""

    def __init__(self, source: Preprocessing, target: Preprocessing, network: StudyNetwork) -> None:
        super().__init__()
        self.network = network
        self.same = source == target
        self.register_buffer("source", torch.tensor([source.channel_std[0], source.channel_mean[0]]), persistent=False)
        shape = (1, target.in_chans, 1, 1)
        self.register_buffer("mean", torch.tensor(target.channel_mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(target.channel_std).view(shape), persistent=False)
        self.in_chans = target.in_chans

    def views(self, images: torch.Tensor) -> ViewOutputs:
        """The member network's outputs for the ensemble's input."""
        if self.same:
            return self.network.views(images)
        gray = images[:, :1] * self.source[0] + self.source[1]
        return self.network.views((gray.expand(-1, self.in_chans, -1, -1) - self.mean) / self.std)


def as_grayscale(image: Radiograph) -> np.ndarray:
    """The (H, W) uint8 array of a radiograph given as a file path, a PIL image or a uint8 array (gray, RGB or
    RGBA); other arrays are a MuraError saying what is expected."""
    if isinstance(image, (str, Path)):
        return read_grayscale(image)
    if isinstance(image, Image.Image):
        return to_grayscale(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise MuraError(f"a radiograph array must be uint8 (0-255), got {array.dtype}: scale it, or pass a PIL image")
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return to_grayscale(Image.fromarray(array))
    raise MuraError(
        f"a radiograph array must be (H, W) gray or (H, W, 3|4) RGB(A), got shape {array.shape}; "
        "channels-first (C, H, W) arrays must be moved to channels-last first"
    )
