"""Calibration: temperature scaling of logits (fitted on validation predictions) and the reliability diagram."""

from __future__ import annotations

import logging
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from mura_lightning.errors import MuraError

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("none", "temperature")
CALIBRATION_BINS = 15  # equal-width confidence bins of the expected calibration error and the reliability diagram
LBFGS_ITERATIONS = 100
LOG_TEMPERATURE_BOUND = 5.0  # temperatures are kept within [e^-5, e^5] (~0.007 to ~148)


def check_calibration(method: str) -> str:
    """`method` when it is a calibration this project knows; a MuraError naming the setting otherwise."""
    if method not in CALIBRATION_METHODS:
        raise MuraError(f"metrics.calibration={method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    return method


def calibrated_probabilities(logits: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """sigmoid(logit / temperature) in float32, whatever the precision the logits came in."""
    return torch.sigmoid(logits.float() / temperature)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 minimising the binary cross-entropy of sigmoid(logits / T) against `labels`, found
    by LBFGS on log T, kept within e^-5..e^5 (logits that say nothing of the labels send T to infinity). 1.0 (no
    scaling), with a warning, when the labels hold one class only: a temperature cannot be told from them."""
    labels = labels.detach().float().reshape(-1)
    if len(labels) == 0 or labels.unique().numel() < 2:
        log.warning("temperature scaling needs validation predictions of both classes; keeping temperature 1")
        return 1.0
    # Validation runs under inference mode; fitting needs autograd on ordinary tensors.
    with torch.inference_mode(False), torch.enable_grad():
        # float64: the loss is flat near its optimum on small splits, and float32 stops the search early there.
        x = logits.detach().double().reshape(-1).clone()
        y = labels.double().clone()
        log_t = torch.zeros((), dtype=torch.float64, device=x.device, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [log_t], max_iter=LBFGS_ITERATIONS, tolerance_change=1e-12, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(x / log_t.exp(), y)
            loss.backward()
            return loss

        optimizer.step(closure)
        fitted = float(log_t.detach())
    if fitted != fitted:
        log.warning("temperature scaling failed (log T is NaN); keeping temperature 1")
        return 1.0
    if abs(fitted) > LOG_TEMPERATURE_BOUND:
        fitted = max(-LOG_TEMPERATURE_BOUND, min(LOG_TEMPERATURE_BOUND, fitted))
        log.warning("temperature scaling ran off (logits of little information); using T = %.3g", math.exp(fitted))
    return math.exp(fitted)


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = CALIBRATION_BINS):
    """Per equal-width confidence bin of [0, 1] (p falls in the bin [lo, hi), as in torchmetrics; 1 in the last):
    the number of predictions, their mean probability and the observed frequency of the abnormal class
    (NaN for empty bins)."""
    probs, labels = probs.detach().float().reshape(-1), labels.detach().float().reshape(-1)
    edges = torch.linspace(0, 1, n_bins + 1)
    index = (torch.bucketize(probs, edges, right=True) - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins).float()
    confidence = torch.bincount(index, weights=probs, minlength=n_bins) / counts
    frequency = torch.bincount(index, weights=labels, minlength=n_bins) / counts
    return counts.long(), confidence, frequency


def reliability_figure(probs: torch.Tensor, labels: torch.Tensor, title: str) -> plt.Figure:
    """The reliability diagram: observed frequency of the abnormal class against mean predicted probability
    per confidence bin (points sized and labelled by their count), beside the diagonal of perfect calibration."""
    counts, confidence, frequency = reliability_bins(probs, labels)
    filled = counts > 0
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    x, y, n = confidence[filled].numpy(), frequency[filled].numpy(), counts[filled].numpy()
    axis.plot(x, y, marker="o", color="tab:blue", label="observed")
    for xi, yi, ni in zip(x, y, n, strict=True):
        axis.annotate(str(int(ni)), (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed frequency (abnormal)")
    axis.set_title(f"{title}: reliability")
    axis.legend(loc="upper left")
    return figure
