"""Which study each view of a flat batch belongs to, and reductions over each study's views (segment operations):
variable view counts without padding, so no padded view can ever move a study's score."""

from __future__ import annotations

import torch


class Segments:
    """The views of a flat batch grouped into `count` studies: `index` (N,) holds each view's study, 0 to count - 1.

    Reductions take per-view values (N, ...) and return per-study values (count, ...); `spread` sends per-study
    values back to the views. Every reduction touches only the views of its own study.

    Args:
        index: each view's study, a (N,) long tensor with values in [0, count).
        count: the number of studies.

    Example:
        ```python
        import torch
        from mura_lightning.models.segments import Segments

        segments, ids = Segments.of(torch.tensor([7, 3, 7]))  # views of studies 7, 3, 7
        segments.sum(torch.tensor([1.0, 2.0, 3.0]))  # tensor([2., 4.]): study 3, then study 7 (ids)
        ```
    """

    def __init__(self, index: torch.Tensor, count: int) -> None:
        self.index = index
        self.count = count

    @classmethod
    def of(cls, studies: torch.Tensor) -> tuple[Segments, torch.Tensor]:
        """The segments of a batch whose views carry study ids `studies` (N,), and the distinct ids in ascending
        order: study i of the segments is `ids[i]`."""
        ids, index = torch.unique(studies, return_inverse=True)
        return cls(index, len(ids)), ids

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Each study's sum of its views' values."""
        out = values.new_zeros((self.count, *values.shape[1:]))
        return out.index_add(0, self.index, values)

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """Each study's maximum over its views' values (1-D values)."""
        out = values.new_full((self.count,), -torch.inf)
        return out.scatter_reduce(0, self.index, values, "amax", include_self=True)

    def min(self, values: torch.Tensor) -> torch.Tensor:
        """Each study's minimum over its views' values (1-D values of any dtype; a study's first image id, say)."""
        out = values.new_zeros((self.count,))
        return out.scatter_reduce(0, self.index, values, "amin", include_self=False)

    def spread(self, per_study: torch.Tensor) -> torch.Tensor:
        """Per-study values sent to each of the study's views (or a tensor that broadcasts to them)."""
        return per_study[self.index]

    def first(self, values: torch.Tensor) -> torch.Tensor:
        """Each study's value of a quantity its views share (its label, its body part)."""
        return values.new_zeros((self.count, *values.shape[1:])).index_copy(0, self.index, values)

    def softmax(self, scores: torch.Tensor) -> torch.Tensor:
        """softmax_k(scores) over each study's views: the per-study maximum subtracted, exponentiated, divided by
        the per-study sum. Weights of a study sum to 1."""
        shifted = torch.exp(scores - self.spread(self.max(scores.detach())))
        return shifted / self.spread(self.sum(shifted))

    def share_of_maximum(self, values: torch.Tensor) -> torch.Tensor:
        """1 / (number of maxima) on the views that hold their study's maximum value, 0 elsewhere."""
        top = (values == self.spread(self.max(values))).to(torch.float32)
        return top / self.spread(self.sum(top))


class OneStudy(Segments):
    """Every view of the batch is one study: plain reductions over dimension 0, which trace into any number of views
    (the exported models take one study)."""

    def __init__(self) -> None:
        super().__init__(torch.zeros(0, dtype=torch.long), 1)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return values.sum(0, keepdim=True)

    def max(self, values: torch.Tensor) -> torch.Tensor:
        return values.amax(0, keepdim=True)

    def spread(self, per_study: torch.Tensor) -> torch.Tensor:
        return per_study

    def first(self, values: torch.Tensor) -> torch.Tensor:
        return values[:1]

    def min(self, values: torch.Tensor) -> torch.Tensor:
        return values.amin(0, keepdim=True)
