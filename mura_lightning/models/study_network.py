"""A trained network as inference and explanations use it: backbone, head and pooling, from views to study scores."""

from __future__ import annotations

import torch
from torch import nn

from mura_lightning.models.pooling import LogitPooling, StudyPooling, StudyScores, ViewOutputs
from mura_lightning.models.segments import OneStudy, Segments


def view_outputs(output: torch.Tensor, head: nn.Module | None) -> ViewOutputs:
    """The view logits (N,) of a backbone's output: its logits (N, 1), or, when its `head` is kept apart, the
    embeddings (N, D) the head maps to them."""
    if head is None:
        return ViewOutputs(output.squeeze(1))
    return ViewOutputs(head(output).squeeze(1), output)


class StudyNetwork(nn.Module):
    """One trained network: `net` (a backbone, ending in its one-logit head unless `head` is given apart, for
    poolings of embeddings) and its `pooling`. `forward` gives the view logits (N, 1), as Grad-CAM and the image
    exports take them; `score` the views' and studies' probabilities and the view weights.

    Args:
        net: the backbone.
        pooling: how the views of a study become its score.
        head: the one-logit head, when `net` ends before it (attention poolings); else None.
    """

    def __init__(self, net: nn.Module, pooling: StudyPooling, head: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.pooling = pooling
        self.head = head

    def views(self, images: torch.Tensor) -> ViewOutputs:
        """Each view's logit (and embedding, when the pooling needs it)."""
        return view_outputs(self.net(images), self.head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.views(images).logits.unsqueeze(1)

    def score(self, images: torch.Tensor, segments: Segments, temperature: float = 1.0) -> StudyScores:
        """Probabilities sigmoid(logit / temperature) of the views and of the studies of `segments`, and the view
        weights."""
        return self.pooling.score(self.views(images), segments, temperature)


class StudyLogit(nn.Module):
    """The study logit of a study pooling, for Grad-CAM: the batch is the views of one study, and each view's output
    row is that study's logit (N, 1), so Grad-CAM's gradients on each view are those of the study logit."""

    def __init__(self, network: StudyNetwork) -> None:
        super().__init__()
        if not isinstance(network.pooling, LogitPooling):
            raise TypeError(f"{network.pooling.name} pooling has no study logit: its studies are scored from images")
        self.network = network

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        logits, _ = self.network.pooling(self.network.views(views), OneStudy())
        return logits.expand(len(views)).unsqueeze(1)
