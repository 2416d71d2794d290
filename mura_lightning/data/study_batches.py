"""Study batches: whole studies packed into batches of up to `batch_size` images, for study poolings.

A study is never split across batches, nor (since DDP deals out whole batches) across processes. In training each
study shows at most `max_views` of its views (and never more than a batch holds), a random subset drawn anew each
epoch; validation and test show every view, and a study with more views than `batch_size` is a batch of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mura_lightning.errors import MuraError


def check_max_views(max_views: int | None) -> int | None:
    """`max_views` when it is None or a whole number >= 1; a MuraError saying what to pass otherwise."""
    if max_views is not None and not (isinstance(max_views, int) and max_views >= 1):
        raise MuraError(
            f"data.max_views={max_views!r} must be a whole number of views, at least 1 (or null: as many as "
            "data.batch_size); it caps the views of a study in a training batch"
        )
    return max_views


def pack_studies(view_counts: Sequence[int], capacity: int) -> list[list[int]]:
    """The studies (positions in `view_counts`) grouped into batches of at most `capacity` views, each study whole:
    best fit (a study goes to the open batch it fills most, else opens one), so batches end up nearly full. A study
    of more than `capacity` views is a batch of its own. Batches come in the order they were opened."""
    batches: list[list[int]] = []
    open_by_room: list[list[int]] = [[] for _ in range(capacity + 1)]  # free room -> open batches with it
    for study, views in enumerate(view_counts):
        if views >= capacity:
            batches.append([study])
            continue
        room = next((r for r in range(views, capacity + 1) if open_by_room[r]), None)
        if room is None:
            batch, left = len(batches), capacity - views
            batches.append([study])
        else:
            batch = open_by_room[room].pop()
            batches[batch].append(study)
            left = room - views
        if left:
            open_by_room[left].append(batch)
    return batches


class StudyBatchSampler(Sampler[list[int]]):
    """Yields batches of image positions (into the dataset whose rows `studies` describes: each image's study id),
    whole studies packed by `pack_studies` into at most `batch_size` images.

    Training (`train`): each epoch draws the studies in a random order (or, with `balance_labels`, each image's
    label, with replacement so that normal and abnormal studies come equally often), shows each at most
    min(`max_views`, `batch_size`) of its views, chosen at random, and yields the floor(views shown / batch_size)
    fullest batches in a random order; so every epoch has the same number of batches (a DDP requirement) and, as
    with drop_last, the studies of the last partial batches wait for the next epoch. Draws depend only on `seed`
    and the epoch (`set_epoch`, called by Lightning), so every process plans the same batches and DDP deals them out
    whole. Evaluation: every view of every study, in study order; the same batches every time.
    """

    def __init__(
        self,
        studies: Sequence[int] | np.ndarray | torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        max_views: int | None = None,
        seed: int = 0,
        balance_labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise MuraError(f"data.batch_size={batch_size!r} must be a whole number of images, at least 1")
        check_max_views(max_views)
        groups: dict[int, list[int]] = {}
        for position, study in enumerate(np.asarray(studies).tolist()):
            groups.setdefault(study, []).append(position)
        self.views = [np.asarray(positions) for positions in groups.values()]  # per study, its images' positions
        self.batch_size = batch_size
        self.train = train
        self.cap = min(max_views or batch_size, batch_size)
        self.seed = seed
        self.epoch = 0
        self.study_weights = None if balance_labels is None else self._balancing_weights(np.asarray(balance_labels))
        shown = sum(min(len(v), self.cap) for v in self.views)
        self.epoch_batches = max(1, shown // batch_size)
        self.eval_batches = None if train else self._batches(list(range(len(self.views))), None)

    def _balancing_weights(self, labels: np.ndarray) -> np.ndarray:
        """Per study, 1 / (number of studies of its label)."""
        study_labels = np.array([labels[views[0]] for views in self.views]).astype(np.int64)
        return 1.0 / np.bincount(study_labels, minlength=2).clip(min=1)[study_labels]

    def set_epoch(self, epoch: int) -> None:
        """Draw the next `__iter__`'s studies, views and batches for this epoch."""
        self.epoch = epoch

    def plan(self, epoch: int) -> list[list[int]]:
        """The batches of an epoch (in evaluation, every epoch's)."""
        if not self.train:
            return self.eval_batches
        return self._training_batches(np.random.default_rng((self.seed, epoch)))

    def __len__(self) -> int:
        return self.epoch_batches if self.train else len(self.eval_batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.plan(self.epoch))

    def _training_batches(self, rng: np.random.Generator) -> list[list[int]]:
        weighted = self.study_weights is not None
        drawn = self._weighted_draws(rng) if weighted else rng.permutation(len(self.views)).tolist()
        batches = self._batches(drawn, rng)
        fullest = sorted(range(len(batches)), key=lambda b: -len(batches[b]))[: self.epoch_batches]
        return [batches[b] for b in rng.permutation(fullest)]

    def _weighted_draws(self, rng: np.random.Generator) -> list[int]:
        """Studies drawn with replacement in proportion to their weights until they show enough views to fill
        every batch of the epoch."""
        probabilities = self.study_weights / self.study_weights.sum()
        needed, drawn = self.epoch_batches * self.batch_size, []
        while sum(min(len(self.views[s]), self.cap) for s in drawn) < needed:
            drawn.extend(rng.choice(len(self.views), size=len(self.views), p=probabilities).tolist())
        return drawn

    def _batches(self, studies: list[int], rng: np.random.Generator | None) -> list[list[int]]:
        """The image positions of each batch of these studies (training: a random subset of at most `cap` views
        of each, in a random order; evaluation: all views)."""
        shown = [self._shown_views(study, rng) for study in studies]
        packed = pack_studies([len(views) for views in shown], self.batch_size)
        return [[int(position) for member in batch for position in shown[member]] for batch in packed]

    def _shown_views(self, study: int, rng: np.random.Generator | None) -> np.ndarray:
        views = self.views[study]
        if rng is None:
            return views
        if len(views) <= self.cap:
            return rng.permutation(views)
        return rng.choice(views, size=self.cap, replace=False)


class ImageBatches(Dataset):
    """Batches of a dataset's items, for a DataLoader with `batch_size=None` to collate: indexed by a list of
    positions (what a `StudyBatchSampler` yields), or by the number of a batch of `plan`, the batches a sequential
    sampler walks through (what Lightning puts in place of the sampler for `trainer.overfit_batches`)."""

    def __init__(self, images: Dataset, plan: list[list[int]]) -> None:
        self.images = images
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, batch: list[int] | int) -> list:
        positions = self.plan[batch] if isinstance(batch, int) else batch
        return [self.images[position] for position in positions]
