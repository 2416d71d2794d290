"""Study pooling: how the views of a study become the study's score (conf/pooling).

Two kinds. Image poolings (`mean_prob`, `max_prob`) train image by image, each view carrying its study's label, and
score a study afterwards by the mean (the MURA paper) or the maximum of its views' probabilities. Study poolings
(`max`, `lse`, `noisy_or`, `attention`, `gated_attention`) pool the views' logits, or their embeddings, into one
study logit inside the model, trained end to end on whole studies with a study-level loss.

Every pooling also scores each view on its own, as a study of that one view (`sigmoid(view logit / T)`: max, lse
and noisy-or of one logit are that logit, and attention's one weight is 1), which image metrics use; and gives
each view a weight, its share in the study's score, which `predict` reports.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

from mura_lightning.errors import MuraError
from mura_lightning.models.segments import Segments

DEFAULT_POOLING = "mean_prob"
IMAGE_POOLINGS = ("mean_prob", "max_prob")  # trained on images; the others on whole studies
LOG_EXPM1_SERIES_BELOW = 0.05  # log(e^y - 1) by its series below this, where exp(y) - 1 would cancel
SMALLEST_SURVIVAL_LOG = 1e-30  # noisy-or: the smallest -log P(no view abnormal) kept (a study logit of about -69)


@dataclass
class ViewOutputs:
    """What a network gives for a flat batch of views: one logit each (N,) and, for poolings that pool
    embeddings, the embedding its head maps to that logit (N, D); else None."""

    logits: torch.Tensor
    embeddings: torch.Tensor | None = None


@dataclass
class StudyScores:
    """Per view (N,): its probability as a study of its own and its weight in its study's score (a study's weights
    sum to 1); per study (S,): the study's probability."""

    view_probs: torch.Tensor
    study_probs: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def mean(cls, scores: list[StudyScores]) -> StudyScores:
        """The element-wise mean of several scorings of the same views (ensemble members, test-time views)."""
        return cls(**{f.name: torch.stack([getattr(s, f.name) for s in scores]).mean(0) for f in fields(cls)})


class StudyPooling(nn.Module):
    """How a study's views become its score; see the module docstring. `trains_on_studies`: trained on whole
    studies (study batches and a study loss) rather than on images; `needs_embeddings`: pools the views'
    embeddings, so the network's head stays apart from its backbone."""

    name: str
    trains_on_studies = True
    needs_embeddings = False

    def score(self, views: ViewOutputs, segments: Segments, temperature: float | torch.Tensor = 1.0) -> StudyScores:
        """Probabilities (calibrated by `temperature`) and view weights of the studies of `segments`."""
        raise NotImplementedError


class ProbabilityPooling(StudyPooling):
    """An image pooling: a study's probability is the mean (`mean_prob`) or the maximum (`max_prob`) of its views'
    probabilities sigmoid(logit / T); trained image by image. Weights: 1/n each (mean), the maximal view (max)."""

    trains_on_studies = False

    def __init__(self, aggregation: str) -> None:
        super().__init__()
        self.aggregation = aggregation
        self.name = f"{aggregation}_prob"

    def score(self, views: ViewOutputs, segments: Segments, temperature: float | torch.Tensor = 1.0) -> StudyScores:
        probs = torch.sigmoid(views.logits.float() / temperature)
        if self.aggregation == "mean":
            weights = 1.0 / segments.spread(segments.sum(torch.ones_like(probs)))
            return StudyScores(probs, segments.sum(probs * weights), weights * torch.ones_like(probs))
        return StudyScores(probs, segments.max(probs), segments.share_of_maximum(probs))


class LogitPooling(StudyPooling):
    """A study pooling: `forward` pools the views of each study into one study logit and gives the view weights;
    the study's probability is sigmoid(study logit / T)."""

    def forward(self, views: ViewOutputs, segments: Segments) -> tuple[torch.Tensor, torch.Tensor]:
        """Study logits (S,) and view weights (N,)."""
        raise NotImplementedError

    def score(self, views: ViewOutputs, segments: Segments, temperature: float | torch.Tensor = 1.0) -> StudyScores:
        logits, weights = self(views, segments)
        return StudyScores(
            torch.sigmoid(views.logits.float() / temperature), torch.sigmoid(logits / temperature), weights
        )


class MaxPooling(LogitPooling):
    """The study logit is the largest of its views' logits (the weight goes to that view)."""

    name = "max"

    def forward(self, views: ViewOutputs, segments: Segments) -> tuple[torch.Tensor, torch.Tensor]:
        logits = views.logits.float()
        return segments.max(logits), segments.share_of_maximum(logits)


class LogSumExpPooling(LogitPooling):
    """Log-sum-exp (Pinheiro & Collobert 2015): temperature * log(mean_k exp(logit_k / temperature)), between the
    mean of the logits (temperature -> infinity) and their maximum (temperature -> 0). Weights: softmax_k(logit_k /
    temperature), the gradient of the pooled logit."""

    name = "lse"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
            raise MuraError(f"model.pooling.temperature={temperature!r} must be a positive number (lse pooling)")
        self.temperature = float(temperature)

    def forward(self, views: ViewOutputs, segments: Segments) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = views.logits.float() / self.temperature
        top = segments.max(scaled.detach())
        sums = segments.sum(torch.exp(scaled - segments.spread(top)))
        counts = segments.sum(torch.ones_like(scaled))
        logits = self.temperature * (top + torch.log(sums) - torch.log(counts))
        return logits, segments.softmax(scaled)


def log_expm1(values: torch.Tensor) -> torch.Tensor:
    """log(exp(y) - 1) for y > 0, accurate near 0 (series) and exportable to ONNX (which has no expm1)."""
    small = values.clamp(min=SMALLEST_SURVIVAL_LOG, max=LOG_EXPM1_SERIES_BELOW)
    large = values.clamp(min=LOG_EXPM1_SERIES_BELOW)
    series = torch.log(small) + small / 2 + small * small / 24
    return torch.where(values < LOG_EXPM1_SERIES_BELOW, series, large + torch.log1p(-torch.exp(-large)))


class NoisyOrPooling(LogitPooling):
    """Noisy-or: the study is abnormal unless no view is, P = 1 - prod_k (1 - p_k). In logits, with
    y = sum_k softplus(logit_k) = -log P(no view abnormal), the study logit is log(exp(y) - 1). Weights: each view's
    share softplus(logit_k) / y of y."""

    name = "noisy_or"

    def forward(self, views: ViewOutputs, segments: Segments) -> tuple[torch.Tensor, torch.Tensor]:
        survival = F.softplus(views.logits.float())
        total = segments.sum(survival)
        return log_expm1(total), survival / segments.spread(total.clamp(min=SMALLEST_SURVIVAL_LOG))


class AttentionPooling(LogitPooling):
    """Attention-based MIL pooling (Ilse, Tomczak & Welling 2018, arXiv:1802.04712) over the views' embeddings h_k:
    a_k = softmax_k(w^T tanh(V h_k)), gated: a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k))), and a linear head
    on z = sum_k a_k h_k. The head is the network's own one-logit head, so head(z) = sum_k a_k head(h_k): the study
    logit is the attention-weighted mean of the view logits, which this computes."""

    needs_embeddings = True

    def __init__(self, embedding_dim: int, hidden: int = 128, gated: bool = False) -> None:
        super().__init__()
        if not (isinstance(hidden, int) and hidden >= 1):
            raise MuraError(f"model.pooling.hidden={hidden!r} must be a whole number of units, at least 1")
        self.name = "gated_attention" if gated else "attention"
        self.attention_v = nn.Linear(embedding_dim, hidden)
        self.attention_u = nn.Linear(embedding_dim, hidden) if gated else None
        self.attention_w = nn.Linear(hidden, 1)

    def attention_scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """w^T tanh(V h) (gated: w^T (tanh(V h) * sigmoid(U h))) of each view, before the softmax."""
        hidden = torch.tanh(self.attention_v(embeddings))
        if self.attention_u is not None:
            hidden = hidden * torch.sigmoid(self.attention_u(embeddings))
        return self.attention_w(hidden).squeeze(1).float()

    def forward(self, views: ViewOutputs, segments: Segments) -> tuple[torch.Tensor, torch.Tensor]:
        if views.embeddings is None:
            raise MuraError(f"{self.name} pooling needs the views' embeddings; the network gave logits only")
        weights = segments.softmax(self.attention_scores(views.embeddings))
        return segments.sum(weights * views.logits.float()), weights


def _gated_attention(embedding_dim: int, hidden: int = 128) -> AttentionPooling:
    return AttentionPooling(embedding_dim, hidden, gated=True)


POOLINGS = {
    "mean_prob": lambda: ProbabilityPooling("mean"),
    "max_prob": lambda: ProbabilityPooling("max"),
    "max": MaxPooling,
    "lse": LogSumExpPooling,
    "noisy_or": NoisyOrPooling,
    "attention": AttentionPooling,
    "gated_attention": _gated_attention,
}


def build_pooling(name: str, embedding_dim: int, **options: object) -> StudyPooling:
    """The pooling called `name` (conf/pooling) with its options (lse: temperature; attention poolings: hidden);
    `embedding_dim` is the backbone's embedding size. An unknown name or option is a MuraError listing the valid
    ones."""
    if name not in POOLINGS:
        raise MuraError(f"model.pooling.name={name!r} is not a pooling: choose one of {', '.join(POOLINGS)}")
    builder = POOLINGS[name]
    parameters = inspect.signature(builder).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p.name for p in parameters if p.kind in named and p.name != "embedding_dim"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"its options are {', '.join(accepted)}" if accepted else "it takes no options"
        raise MuraError(f"pooling={name} has no option {', '.join(unknown)}: {takes}")
    if "embedding_dim" in inspect.signature(builder).parameters:
        return builder(embedding_dim, **options)
    return builder(**options)
