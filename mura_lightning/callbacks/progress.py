"""Training progress that shows in log files: Rich's live bar on a terminal, plain log lines otherwise.

With stdout not a terminal (SLURM logs, `| tee`, CI) Rich's live display writes nothing until it stops, so
`progress_bar(mode="auto")` picks `LogProgressBar` there: a line every N batches of a long epoch (loss, images/s,
time left in the epoch) and one per epoch (mean loss, images/s, the chosen metrics, time left in the fit), after a
line saying how many epochs of how many batches the training is to run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

from mura_lightning.progress import AUTO, RICH, format_duration, resolve_mode, time_left

log = logging.getLogger(__name__)


def batch_length(batch: Any) -> int:
    """The number of samples in a batch: the length of its first tensor (in a dict, list or tuple); 0 if none."""
    if isinstance(batch, torch.Tensor):
        return len(batch) if batch.ndim else 0
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    return next((length for length in map(batch_length, values) if length), 0)


def _loss(outputs: Any) -> torch.Tensor | None:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss.detach().float() if isinstance(loss, torch.Tensor) else None


class _Meter:
    """Batches, samples and the summed loss since a start time; the loss stays on its device until read."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.batches = self.samples = self.losses = 0
        self.loss_sum: torch.Tensor | float = 0.0

    def add(self, samples: int, loss: torch.Tensor | None = None) -> None:
        self.batches += 1
        self.last = time.monotonic()
        self.samples += samples
        if loss is not None:
            self.loss_sum = self.loss_sum + loss
            self.losses += 1

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def rate(self, world_size: int) -> str:
        """Samples per second over all ranks, from the start to the last batch (so not counting validation)."""
        elapsed = self.last - self.start
        return f"{self.samples * world_size / elapsed:.1f} img/s" if elapsed > 0 else "? img/s"

    def mean_loss(self) -> str:
        return f"loss {float(self.loss_sum) / self.losses:.4f}" if self.losses else "loss ?"


class LogProgressBar(ProgressBar):
    """Progress as plain log lines, for logs that are files. Every `every_n_batches` batches of an epoch (or of a
    validation, test or predict loop) that is longer: the mean loss of those batches, images/s and the time
    left in the epoch. After each training epoch: its mean loss, images/s, `metrics` (those measured) and the
    time left in the fit. After a validation, test or predict run of its own: batches, images and images/s."""

    def __init__(self, every_n_batches: int = 50, metrics: Sequence[str] = ()) -> None:
        super().__init__()
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches={every_n_batches} must be at least 1")
        self.every_n_batches = every_n_batches
        self.metrics = list(metrics)
        self._enabled = True
        self._fit_start = time.monotonic()
        self._epochs_done = 0
        self._epoch = self._window = self._eval = _Meter()

    def disable(self) -> None:
        """Log nothing (Lightning calls this on ranks other than 0)."""
        self._enabled = False

    def enable(self) -> None:
        """Log again."""
        self._enabled = True

    def _epoch_name(self, trainer: L.Trainer) -> str:
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return f"epoch {trainer.current_epoch + 1}{total}"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.monotonic()
        self._epochs_done = 0
        if self._enabled:
            bounded = trainer.max_epochs is not None and trainer.max_epochs > 0
            epochs = _counted(trainer.max_epochs, "epoch", "epochs") if bounded else "no epoch limit"
            log.info("training: %s of %s", epochs, _counted(self.total_train_batches, "batch", "batches"))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch, self._window = _Meter(), _Meter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        samples, loss = batch_length(batch), _loss(outputs)
        self._epoch.add(samples, loss)
        self._window.add(samples, loss)
        done, total = batch_idx + 1, self.total_train_batches
        if self._enabled and done % self.every_n_batches == 0 and done < total:
            left = time_left(self._epoch.elapsed(), done, total)
            log.info(
                "%s batch %d/%s: %s, %s, %s left in the epoch",
                self._epoch_name(trainer),
                done,
                _count(total),
                self._window.mean_loss(),
                self._window.rate(trainer.world_size),
                format_duration(left),
            )
            self._window = _Meter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epochs_done += 1
        if not self._enabled:
            return
        measured = trainer.callback_metrics
        values = [f"{name} {float(measured[name]):.4f}" for name in self.metrics if name in measured]
        epochs_left = trainer.max_epochs - trainer.current_epoch - 1 if trainer.max_epochs else -1
        per_epoch = (time.monotonic() - self._fit_start) / self._epochs_done
        fit_left = per_epoch * epochs_left if epochs_left >= 0 else math.inf
        log.info(
            "%s done in %s: %s, %s%s; %s left in the fit",
            self._epoch_name(trainer),
            format_duration(self._epoch.elapsed()),
            self._epoch.mean_loss(),
            self._epoch.rate(trainer.world_size),
            "".join(f", {value}" for value in values),
            format_duration(fit_left),
        )

    def _eval_start(self, trainer: L.Trainer) -> None:
        self._eval = _Meter()

    def _eval_batch_end(self, trainer: L.Trainer, stage: str, batch: Any, batch_idx: int, total: float) -> None:
        if trainer.sanity_checking:
            return
        self._eval.add(batch_length(batch))
        done = batch_idx + 1
        if self._enabled and done % self.every_n_batches == 0 and done < total:
            left = format_duration(time_left(self._eval.elapsed(), done, total))
            log.info("%s batch %d/%s: %s, %s left", stage, done, _count(total), self._eval.rate(1), left)

    def _eval_end(self, trainer: L.Trainer, stage: str) -> None:
        if self._enabled and not trainer.sanity_checking and not (stage == "validation" and trainer.state.fn == "fit"):
            meter = self._eval
            log.info(
                "%s: %d batches, %d images in %s (%s)",
                stage,
                meter.batches,
                meter.samples,
                format_duration(meter.elapsed()),
                meter.rate(trainer.world_size),
            )

    def on_validation_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_end(trainer, "validation", batch, batch_idx, trainer.num_val_batches[dataloader_idx])

    def on_validation_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, "validation")

    def on_test_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_end(trainer, "test", batch, batch_idx, trainer.num_test_batches[dataloader_idx])

    def on_test_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, "test")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_end(trainer, "predict", batch, batch_idx, trainer.num_predict_batches[dataloader_idx])

    def on_predict_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, "predict")


def _count(total: float) -> str:
    return str(int(total)) if math.isfinite(total) else "?"


def _counted(total: float, noun: str, plural: str) -> str:
    """`1 epoch`, `3 epochs`, `? batches`."""
    return f"{_count(total)} {noun if total == 1 else plural}"


def progress_bar(
    mode: str = AUTO, every_n_batches: int = 50, metrics: Sequence[str] = ()
) -> RichProgressBar | LogProgressBar:
    """The progress bar for this run: Rich's live bar when `mode` is rich (or auto with stdout a terminal),
    `LogProgressBar(every_n_batches, metrics)` when it is plain (or auto with stdout a file or pipe)."""
    if resolve_mode(mode) == RICH:
        return RichProgressBar()
    return LogProgressBar(every_n_batches, metrics)
