"""MURAClassifier: one logit per radiograph, and a study's score from its views (conf/pooling): the mean of their
probabilities, as MURA scores studies, or a pooling trained end to end on whole studies."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from lightning import LightningModule
from torch import nn

from mura_lightning.data.index import BODY_PARTS
from mura_lightning.data.presets import EvalPreset, Preprocessing
from mura_lightning.errors import MuraError
from mura_lightning.evaluation.calibration import calibrated_probabilities, fit_temperature
from mura_lightning.evaluation.metrics import PredictionTable, StageMetrics
from mura_lightning.evaluation.thresholds import MetricSettings, tune_threshold, tune_thresholds_per_part
from mura_lightning.models.backbones import build_backbone, cam_target_layer, head_of, take_head
from mura_lightning.models.compiled import CompiledForward
from mura_lightning.models.loss_watch import LossWatch
from mura_lightning.models.losses import BCELoss, MuraLoss
from mura_lightning.models.pooling import DEFAULT_POOLING, IMAGE_POOLINGS, ViewOutputs, build_pooling
from mura_lightning.models.segments import Segments
from mura_lightning.models.study_network import StudyNetwork, view_outputs

log = logging.getLogger(__name__)

EVAL_STAGES = ("val", "test")


@dataclass
class PooledBatch:
    """A study batch through a study pooling: the loss, the view outputs, the studies (segments) and, per study,
    its logit, label and body part."""

    loss: torch.Tensor
    views: ViewOutputs
    segments: Segments
    study_logits: torch.Tensor
    labels: torch.Tensor
    body_parts: torch.Tensor


class MURAClassifier(LightningModule):
    """A torchvision backbone with one logit per view, scored per view and per study.

    `backbone` holds `build_backbone`'s arguments but `in_chans`; `preprocessing` (image_size, mean, std, in_chans;
    see `Preprocessing`) is what the model takes: it travels with the checkpoint so the model can be rebuilt and fed
    without the training config, and the datamodule is given it. `pooling` (conf/pooling: `name` and its options;
    see mura_lightning.models.pooling) says how a study is scored: an image pooling (`mean_prob`, `max_prob`) trains
    on images, each with its study's label, and scores studies from the image probabilities; a study pooling
    trains on batches of whole studies (the datamodule's `study_batches`) with the loss on the study logits (class
    weights counted on studies), plus `image_loss_weight` times the same loss on the view logits, each view with its
    study's label (weights counted on images; 0 leaves it out). `compile` runs the backbone's training forward through
    `torch.compile` (in `compile_mode`, inductor's caches in `compile_cache_dir`; a compile that fails or outlasts
    `compile_timeout_s` falls back to eager with a warning, see CompiledForward) and `channels_last` keeps its
    weights and inputs in NHWC layout (both for speed on GPUs; neither changes the checkpoint). `loss`,
    `optimizer` (a partial taking `params`) and `scheduler` (a partial taking `optimizer`, with `scheduler_settings`
    such as `monitor` and `interval`) are objects built from the config by Hydra. `metrics`
    holds MetricSettings: with `tune_threshold`, each validation picks a threshold on its predictions; it is kept in
    the `tuned_threshold` buffer (so checkpoints carry the threshold of their epoch) and applied to test. With
    `threshold_per_body_part`, it also picks one per body part (the `tuned_thresholds` buffer, one per BODY_PARTS
    entry; parts without both classes in val keep the global one). With `calibration=temperature`, each validation
    first fits a temperature on its image logits (study logits, for study poolings; the `temperature` buffer, 1
    otherwise); test probabilities and
    the tuned thresholds use sigmoid(logit / temperature). Val metrics themselves stay uncalibrated: the
    temperature is fitted on those very predictions, so their calibrated scores would flatter the model.

    After each validation and test epoch, `last_metrics[stage]` holds the logged values and
    `last_predictions[stage]` the image and study prediction tables, on the CPU (figures and files read them
    there).
    """

    def __init__(
        self,
        *,
        backbone: dict[str, Any],
        preprocessing: dict[str, Any],
        pooling: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        compile: bool = False,
        compile_mode: str = "default",
        compile_timeout_s: float | None = None,
        compile_cache_dir: str | None = None,
        channels_last: bool = False,
        loss: MuraLoss | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler", "compile_cache_dir"], logger=False)
        self.preprocessing = Preprocessing.from_dict(preprocessing)
        self.net = build_backbone(**backbone, in_chans=self.preprocessing.in_chans)
        options = dict(pooling or {"name": DEFAULT_POOLING})
        self.image_loss_weight = float(options.pop("image_loss_weight", 0.0))
        self.pooling = build_pooling(options.pop("name"), head_of(self.net, backbone["name"]).in_features, **options)
        self._check_image_loss_weight()
        self.head = take_head(self.net, backbone["name"]) if self.pooling.needs_embeddings else None
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        options = {"mode": compile_mode, "timeout_s": compile_timeout_s, "cache_dir": compile_cache_dir}
        self._train_forward = CompiledForward(self.net.forward, **options) if compile else self.net.forward
        self.loss = loss if loss is not None else BCELoss()
        self.image_loss = copy.deepcopy(self.loss) if self.image_loss_weight else None
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_settings = dict(scheduler_settings or {})
        self.metric_settings = MetricSettings(**(metrics or {}))
        self.register_buffer("tuned_threshold", torch.tensor(self.metric_settings.threshold))
        self.register_buffer("tuned_thresholds", torch.full((len(BODY_PARTS),), self.metric_settings.threshold))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.stage_metrics = nn.ModuleDict({stage: StageMetrics() for stage in EVAL_STAGES})
        self.last_predictions: dict[str, dict[str, PredictionTable]] = {}
        self.last_metrics: dict[str, dict[str, float]] = {}
        self.loss_watch = LossWatch()

    def eval_preset(self) -> EvalPreset:
        """The preprocessing this model was trained with, without augmentation: uint8 radiograph -> input."""
        return EvalPreset(preprocessing=self.preprocessing)

    def cam_target_layer(self) -> nn.Module:
        """The layer of `net` whose activations class activation maps are made of (the backbone's `cam_layer`)."""
        return cam_target_layer(self.net, self.hparams["backbone"]["name"])

    def _check_image_loss_weight(self) -> None:
        if not (self.image_loss_weight >= 0 and self.image_loss_weight < float("inf")):
            raise MuraError(f"model.pooling.image_loss_weight={self.image_loss_weight} must be a number >= 0")
        if self.image_loss_weight and not self.pooling.trains_on_studies:
            raise MuraError(
                f"model.pooling.image_loss_weight applies to study poolings; pooling={self.pooling.name} trains on "
                "images already: leave it out, or choose a study pooling (max, lse, noisy_or, attention, ...)"
            )

    @property
    def pools_studies(self) -> bool:
        """Whether this model is trained and scored on whole studies (a study pooling)."""
        return self.pooling.trains_on_studies

    def view_outputs(self, images: torch.Tensor) -> ViewOutputs:
        """Each view's logit (N,), and its embedding when the pooling pools embeddings. Only training runs the
        compiled backbone (`compile`): evaluation, inference and CAMs run it eagerly, so it compiles once."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        training = self.training and torch.is_grad_enabled()
        return view_outputs((self._train_forward if training else self.net.forward)(images), self.head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """One logit per image, shape (N,): for study poolings, the logit of the view as a study of its own."""
        return self.view_outputs(images).logits

    def network(self) -> StudyNetwork:
        """The trained network (backbone, head and pooling, sharing this model's weights) as inference uses it."""
        return StudyNetwork(self.net, self.pooling, self.head)

    def pool(self, batch: dict[str, torch.Tensor]) -> PooledBatch:
        """A batch of whole studies through the network and the pooling, with its loss."""
        views = self.view_outputs(batch["image"])
        segments, _ = Segments.of(batch["study"])
        study_logits, _ = self.pooling(views, segments)
        labels, parts = segments.first(batch["label"]), segments.first(batch["body_part"])
        loss = self.loss(study_logits, labels, parts)
        if self.image_loss is not None:
            loss = loss + self.image_loss_weight * self.image_loss(views.logits, batch["label"], batch["body_part"])
        return PooledBatch(loss, views, segments, study_logits, labels, parts)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Abnormality probabilities of logits, sigmoid(logit / temperature), in float32 whatever the precision
        the logits came in."""
        return calibrated_probabilities(logits, self.temperature)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints from before calibration and per-part thresholds get their neutral values; a checkpoint of
        another study pooling than this model's is refused (its weights would not fit)."""
        saved = pooling_of(checkpoint.get("hyper_parameters") or {})["name"]
        if saved != self.pooling.name and (self.pools_studies or saved not in IMAGE_POOLINGS):
            raise MuraError(
                f"the checkpoint was trained with pooling={saved}, this run is configured with "
                f"pooling={self.pooling.name}: pass pooling={saved} (and the checkpoint's pooling options), or train "
                "a new model"
            )
        fill_missing_buffers(checkpoint["state_dict"])

    def setup(self, stage: str) -> None:
        """Give the losses the training class counts of the datamodule (weighted BCE needs them, val loss too):
        in studies for the loss on study logits, in images for the loss on image logits."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "class_counts"):
            counts = datamodule.class_counts
            self.loss.set_class_counts(counts, "studies" if self.pools_studies else "images")
            if self.image_loss is not None:
                self.image_loss.set_class_counts(counts, "images")
        if datamodule is not None and hasattr(datamodule, "body_parts"):
            for loss in (self.loss, self.image_loss):
                if loss is not None:
                    loss.check_body_parts(datamodule.body_parts)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """The batch's loss and how many rows (images, or studies) it averaged."""
        if self.pools_studies:
            pooled = self.pool(batch)
            return pooled.loss, pooled.segments.count
        logits = self(batch["image"])
        return self.loss(logits, batch["label"], batch["body_part"]), len(logits)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The batch's loss. A non-finite loss raises NonFiniteLossError on every rank, one step later (see
        LossWatch), and always before the validation that would save a checkpoint."""
        self.loss_watch.raise_if_bad()
        loss, rows = self._loss(batch)
        self.loss_watch.queue(loss, self.current_epoch, self.global_step, batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=rows)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.loss_watch.raise_if_bad()

    def on_train_end(self) -> None:
        self.loss_watch.raise_if_bad()

    def _eval_step(self, batch: dict[str, torch.Tensor] | None, stage: str) -> None:
        if batch is None:
            return
        metrics = self.stage_metrics[stage]
        if not self.pools_studies:
            logits = self(batch["image"])
            loss = self.loss(logits, batch["label"], batch["body_part"])
            self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(logits))
            metrics.update(logits, batch["label"], batch["study"], batch["body_part"], batch["image_id"])
            return
        pooled = self.pool(batch)
        segments = pooled.segments
        self.log(f"{stage}/loss", pooled.loss, on_epoch=True, sync_dist=True, batch_size=segments.count)
        metrics.update(pooled.views.logits, batch["label"], batch["study"], batch["body_part"], batch["image_id"])
        studies, first_images = segments.first(batch["study"]), segments.min(batch["image_id"])
        metrics.update_studies(pooled.study_logits, pooled.labels, studies, pooled.body_parts, first_images)

    def validation_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> dict[str, torch.Tensor] | None:
        """Per-image probabilities with the batch's ids and labels (for study poolings, whose batches hold whole
        studies, also each image's study probability `study_prob` and its weight in it); None for a batch whose
        every image was unreadable (data.on_error=skip)."""
        if batch is None:
            return None
        ids = {key: batch[key] for key in ("label", "study", "body_part", "image_id")}
        if not self.pools_studies:
            return {"prob": self.probabilities(self(batch["image"])), **ids}
        segments, _ = Segments.of(batch["study"])
        scores = self.pooling.score(self.view_outputs(batch["image"]), segments, self.temperature)
        study_probs = segments.spread(scores.study_probs)
        return {"prob": scores.view_probs, "study_prob": study_probs, "weight": scores.weights, **ids}

    def decision_threshold(self, stage: str) -> float:
        """The threshold of a stage's decisions: the configured one for val, the tuned one (when tuning) for test."""
        return float(self.tuned_threshold) if stage == "test" else self.metric_settings.threshold

    def decision_thresholds(self, stage: str) -> float | torch.Tensor:
        """`decision_threshold`, or for test with per-body-part thresholds a CPU tensor of one per BODY_PARTS
        entry."""
        if stage == "test" and self.metric_settings.threshold_per_body_part:
            return self.tuned_thresholds.detach().cpu().clone()
        return self.decision_threshold(stage)

    def _eval_epoch_end(self, stage: str) -> None:
        metrics = self.stage_metrics[stage]
        settings = self.metric_settings
        level = "study" if self.pools_studies else "image"
        if stage == "val" and settings.calibration == "temperature":
            logits = metrics.logits(level)
            self.temperature.fill_(fit_temperature(logits.probs, logits.labels))
        aggregation = getattr(self.pooling, "aggregation", None)
        tables = metrics.tables(aggregation, 1.0 if stage == "val" else float(self.temperature))
        values = metrics.score(stage, tables, self.decision_thresholds(stage))
        values[f"{stage}/threshold"] = self.decision_threshold(stage)
        if stage == "val" and settings.tune_threshold:
            calibrated = settings.calibration == "temperature"
            self._tune_thresholds(
                metrics.tables(aggregation, float(self.temperature)) if calibrated else tables, values
            )
        if settings.calibration == "temperature":
            values[f"{stage}/temperature"] = float(self.temperature)
        metrics.reset()
        self.last_metrics[stage] = values
        self.last_predictions[stage] = {level: table.to("cpu") for level, table in tables.items()}
        self.log_dict(values, sync_dist=True)

    def _tune_thresholds(self, tables: dict[str, PredictionTable], values: dict[str, float]) -> None:
        """Tune the threshold(s) on val's (calibrated) predictions, keep them in the buffers and in `values`."""
        settings = self.metric_settings
        table = tables[settings.threshold_level]
        tuned = tune_threshold(table, settings.threshold_method)
        self.tuned_threshold.fill_(tuned)
        values["val/tuned_threshold"] = tuned
        if settings.threshold_per_body_part:
            per_part = tune_thresholds_per_part(table, settings.threshold_method, tuned)
            self.tuned_thresholds.copy_(per_part)
            for part in table.body_parts.unique().tolist():
                values[f"val/tuned_threshold/{BODY_PARTS[part]}"] = float(per_part[part])

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._eval_epoch_end("val")
        else:
            self.stage_metrics["val"].reset()

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise MuraError("MURAClassifier was built without an optimizer; pass optimizer=partial(torch.optim.X)")
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer=optimizer), **self.scheduler_settings}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def pooling_of(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's pooling settings: its `pooling`, or for checkpoints from before the pooling group, the image
    pooling its `study_aggregation` (mean or max of the image probabilities) stands for."""
    if hparams.get("pooling"):
        return dict(hparams["pooling"])
    return {"name": f"{hparams.get('study_aggregation', 'mean')}_prob"}


def fill_missing_buffers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict with the buffers older versions lacked, at values that change nothing: a
    temperature of 1, and the global tuned threshold for every body part. Changed in place and returned."""
    if "tuned_threshold" in state_dict:
        state_dict.setdefault("tuned_thresholds", state_dict["tuned_threshold"].repeat(len(BODY_PARTS)))
    state_dict.setdefault("temperature", torch.tensor(1.0))
    return state_dict
