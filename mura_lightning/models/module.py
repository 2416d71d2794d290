"""MURAClassifier: one logit per radiograph, study-level scoring by aggregating image probabilities."""

from __future__ import annotations

import logging
from collections.abc import Callable
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
from mura_lightning.models.backbones import build_backbone, cam_target_layer
from mura_lightning.models.losses import BCELoss, MuraLoss

log = logging.getLogger(__name__)

EVAL_STAGES = ("val", "test")


class NonFiniteLossError(MuraError):
    """The training loss became NaN or infinite."""


class MURAClassifier(LightningModule):
    """A torchvision backbone with one logit, trained on images and scored per image and per study.

    `backbone` holds `build_backbone`'s arguments but `in_chans`; `preprocessing` (image_size, mean, std, in_chans;
    see `Preprocessing`) is what the model takes: it travels with the checkpoint so the model can be rebuilt and fed
    without the training config, and the datamodule is given it. `compile` runs the backbone through `torch.compile`
    and `channels_last` keeps its weights and inputs in NHWC layout (both for speed on GPUs; neither changes the
    checkpoint). `loss`, `optimizer` (a partial taking `params`) and `scheduler` (a partial taking `optimizer`, with
    `scheduler_settings` such as `monitor` and `interval`) are objects built from the config by Hydra. `metrics`
    holds MetricSettings: with `tune_threshold`, each validation picks a threshold on its predictions; it is kept in
    the `tuned_threshold` buffer (so checkpoints carry the threshold of their epoch) and applied to test. With
    `threshold_per_body_part`, it also picks one per body part (the `tuned_thresholds` buffer, one per BODY_PARTS
    entry; parts without both classes in val keep the global one). With `calibration=temperature`, each validation
    first fits a temperature on its image logits (the `temperature` buffer, 1 otherwise); test probabilities and
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
        study_aggregation: str = "mean",
        metrics: dict[str, Any] | None = None,
        compile: bool = False,
        channels_last: bool = False,
        loss: MuraLoss | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"], logger=False)
        self.preprocessing = Preprocessing.from_dict(preprocessing)
        self.net = build_backbone(**backbone, in_chans=self.preprocessing.in_chans)
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._net_forward = torch.compile(self.net.forward) if compile else self.net.forward
        self.loss = loss if loss is not None else BCELoss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_settings = dict(scheduler_settings or {})
        self.study_aggregation = study_aggregation
        self.metric_settings = MetricSettings(**(metrics or {}))
        self.register_buffer("tuned_threshold", torch.tensor(self.metric_settings.threshold))
        self.register_buffer("tuned_thresholds", torch.full((len(BODY_PARTS),), self.metric_settings.threshold))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.stage_metrics = nn.ModuleDict({stage: StageMetrics() for stage in EVAL_STAGES})
        self.last_predictions: dict[str, dict[str, PredictionTable]] = {}
        self.last_metrics: dict[str, dict[str, float]] = {}

    def eval_preset(self) -> EvalPreset:
        """The preprocessing this model was trained with, without augmentation: uint8 radiograph -> input."""
        return EvalPreset(preprocessing=self.preprocessing)

    def cam_target_layer(self) -> nn.Module:
        """The layer of `net` whose activations class activation maps are made of (the backbone's `cam_layer`)."""
        return cam_target_layer(self.net, self.hparams["backbone"]["name"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """One logit per image, shape (N,)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._net_forward(images).squeeze(1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Abnormality probabilities of logits, sigmoid(logit / temperature), in float32 whatever the precision
        the logits came in."""
        return calibrated_probabilities(logits, self.temperature)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints from before calibration and per-part thresholds get their neutral values."""
        fill_missing_buffers(checkpoint["state_dict"])

    def setup(self, stage: str) -> None:
        """Give the loss the training class counts of the datamodule (weighted BCE needs them, val loss too)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "class_counts"):
            self.loss.set_class_counts(datamodule.class_counts)

    def training_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:
            return None
        logits = self(batch["image"])
        loss = self.loss(logits, batch["label"], batch["body_part"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, global step {self.global_step} "
                f"(batch {batch_idx}). Lower optimizer.lr, try trainer.precision=32, or check the data."
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(logits))
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor] | None, stage: str) -> None:
        if batch is None:
            return
        logits = self(batch["image"])
        loss = self.loss(logits, batch["label"], batch["body_part"])
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(logits))
        self.stage_metrics[stage].update(logits, batch["label"], batch["study"], batch["body_part"], batch["image_id"])

    def validation_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> dict[str, torch.Tensor] | None:
        """Per-image probabilities with the batch's ids and labels; None for a batch whose every image was
        unreadable (data.on_error=skip)."""
        if batch is None:
            return None
        probs = self.probabilities(self(batch["image"]))
        return {"prob": probs, **{key: batch[key] for key in ("label", "study", "body_part", "image_id")}}

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
        if stage == "val" and settings.calibration == "temperature":
            logits = metrics.logits()
            self.temperature.fill_(fit_temperature(logits.probs, logits.labels))
        tables = metrics.tables(self.study_aggregation, 1.0 if stage == "val" else float(self.temperature))
        values = metrics.score(stage, tables, self.decision_thresholds(stage))
        values[f"{stage}/threshold"] = self.decision_threshold(stage)
        if stage == "val" and settings.tune_threshold:
            calibrated = settings.calibration == "temperature"
            self._tune_thresholds(
                metrics.tables(self.study_aggregation, float(self.temperature)) if calibrated else tables, values
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


def fill_missing_buffers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict with the buffers older versions lacked, at values that change nothing: a
    temperature of 1, and the global tuned threshold for every body part. Changed in place and returned."""
    if "tuned_threshold" in state_dict:
        state_dict.setdefault("tuned_thresholds", state_dict["tuned_threshold"].repeat(len(BODY_PARTS)))
    state_dict.setdefault("temperature", torch.tensor(1.0))
    return state_dict
