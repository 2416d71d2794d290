"""MURADataModule: the MURA index, split by patient, served as train/val/test/predict loaders."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, WeightedRandomSampler

from mura_lightning.data.cache import ImageCache, build_cache
from mura_lightning.data.dataset import MuraImageDataset, collate_skipping_none
from mura_lightning.data.index import MuraDataError, MuraIndex, build_index, resolve_body_parts, select_body_parts
from mura_lightning.data.presets import BatchAugment, EvalPreset, Preprocessing, TrainPreset
from mura_lightning.data.splits import assign_subsets, class_counts
from mura_lightning.data.study_batches import ImageBatches, StudyBatchSampler, check_max_views

log = logging.getLogger(__name__)


class MURADataModule(LightningDataModule):
    """MURA for one body part, several, or all: official `train` split by patient into train/val,
    official `valid` as the test (and predict) set. With `num_folds` K and `fold` i, val is fold i of K
    patient folds (cross-validation) instead of a `val_fraction` of the patients.

    `preprocessing` is the model's (`MURAClassifier.preprocessing`, as a dict): the data follows the model.
    Training images are flipped (`hflip_prob`) and rotated (`rotation_degrees`) by `BatchAugment`.

    With `cache`, every image is decoded and resized once into a memory-mapped array under `cache_dir` (see
    ImageCache), so workers only copy bytes. With `gpu_augment`, batches leave the workers as uint8 and are
    flipped, rotated (training) and normalised on the device, in `on_after_batch_transfer`.

    With `study_batches` (set by train for study poolings, as the model says), every loader packs whole studies
    into batches of up to `batch_size` images (see StudyBatchSampler): in training at most `max_views` views of a
    study, a random subset each epoch (None: as many as a batch holds), all of them in val and test. Synthetic MURA,
    generated on first use, is mura_lightning.synthetic.datamodule.SyntheticMURADataModule.
    """

    def __init__(
        self,
        *,
        root: str,
        body_parts: str | Sequence[str],
        preprocessing: Mapping[str, Any],
        batch_size: int,
        num_workers: int,
        val_fraction: float,
        seed: int,
        hflip_prob: float,
        rotation_degrees: float | Sequence[float],
        pin_memory: bool = False,
        persistent_workers: bool = False,
        balanced_sampler: bool = False,
        on_error: str = "raise",
        cache: bool = False,
        cache_dir: str | None = None,
        gpu_augment: bool = False,
        num_folds: int | None = None,
        fold: int | None = None,
        study_batches: bool = False,
        max_views: int | None = None,
    ) -> None:
        super().__init__()
        if not root:
            raise MuraDataError(
                "data.root is not set: pass data.root=/path/to/MURA-v1.1 (the folder holding train/, valid/ and the "
                "official CSVs), or data=synthetic to train on a generated one"
            )
        root = str(Path(root).expanduser().absolute())  # what the checkpoint keeps: valid from any folder
        self.save_hyperparameters(logger=False)
        self.root = Path(root)
        self.body_parts = resolve_body_parts(body_parts)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.val_fraction = val_fraction
        self.num_folds = num_folds
        self.fold = fold
        self.seed = seed
        self.balanced_sampler = balanced_sampler
        self.study_batches = study_batches
        self.max_views = check_max_views(max_views)
        self.on_error = on_error
        if cache and not cache_dir:
            raise MuraDataError("data.cache=true needs data.cache_dir: a folder for the preprocessed images")
        self.cache_dir = Path(cache_dir).expanduser() if cache and cache_dir else None
        self.gpu_augment = gpu_augment
        self.preprocessing = Preprocessing.from_dict(preprocessing)
        self.batch_augment = BatchAugment(hflip_prob=hflip_prob, rotation_degrees=rotation_degrees)
        self.train_preset = TrainPreset(preprocessing=self.preprocessing, augment=self.batch_augment)
        self.eval_preset = EvalPreset(preprocessing=self.preprocessing)
        self.index: MuraIndex | None = None
        self.frame: pd.DataFrame | None = None
        self.datasets: dict[str, MuraImageDataset] = {}
        self._augment_generator: torch.Generator | None = None

    def prepare_data(self) -> None:
        """Build the image cache when asked for (runs on one process only, before `setup` on all)."""
        if self.cache_dir is not None:
            self._image_cache(self._selected_frame())

    def _selected_frame(self) -> pd.DataFrame:
        """The index rows of the chosen body parts, with global image and study ids."""
        self.index = build_index(self.root, on_error=self.on_error)
        full = self.index.frame
        full = full.assign(image_id=range(len(full)), study_id=pd.factorize(full["study"], sort=True)[0])
        return select_body_parts(full, self.body_parts)

    def _image_cache(self, frame: pd.DataFrame) -> ImageCache:
        return build_cache(frame["path"].tolist(), self.preprocessing.image_size, self.cache_dir, self.num_workers)

    def setup(self, stage: str | None = None) -> None:
        """Index the tree, keep the chosen body parts, split by patient, build the four datasets (once)."""
        if self.frame is not None:
            return
        frame = self._selected_frame()
        frame["subset"] = assign_subsets(frame, self.val_fraction, self.seed, num_folds=self.num_folds, fold=self.fold)
        self.frame = frame
        cache = self._image_cache(frame) if self.cache_dir is not None else None
        for subset in ("train", "val", "test"):
            rows = frame[frame["subset"] == subset]
            if rows.empty:
                raise MuraDataError(f"the {subset} subset of {', '.join(self.body_parts)} under {self.root} is empty")
            train = subset == "train"
            self.datasets[subset] = MuraImageDataset(
                rows,
                self.train_preset if train else self.eval_preset,
                augment=train and not self.gpu_augment,
                on_error=self.on_error,
                cache=cache,
                raw=self.gpu_augment,
            )
        log.info(
            "MURA %s from %s: %s",
            ", ".join(self.body_parts),
            self.index.describe_source(),
            ", ".join(f"{name} {len(data)} images" for name, data in self.datasets.items()),
        )

    @property
    def class_counts(self) -> pd.DataFrame:
        """Normal/abnormal image and study counts per body part on the train subset."""
        self._require_setup()
        return class_counts(self.frame[self.frame["subset"] == "train"])

    def study_names(self) -> pd.Series:
        """Study id -> study folder relative to the MURA root, for the studies of this selection."""
        self._require_setup()
        return self.frame.drop_duplicates("study_id").set_index("study_id")["study"].sort_index()

    def image_table(self) -> pd.DataFrame:
        """The selected index rows (path, split, subset, body part, patient, study, ids, label)."""
        self._require_setup()
        return self.frame

    def _require_setup(self) -> None:
        if self.frame is None:
            raise RuntimeError("call setup() on the MURADataModule first")

    def _loader(self, subset: str, train: bool) -> DataLoader:
        dataset = self.datasets[subset]
        if self.study_batches:
            return self._study_loader(dataset, train)
        sampler = self._balanced_sampler(dataset) if train and self.balanced_sampler else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_skipping_none,
        )

    def _study_loader(self, dataset: MuraImageDataset, train: bool) -> DataLoader:
        """Batches of whole studies (the sampler yields each batch's image positions; DDP deals out batches)."""
        sampler = StudyBatchSampler(
            dataset.studies,
            self.batch_size,
            train=train,
            max_views=self.max_views,
            seed=self.seed,
            balance_labels=dataset.labels if train and self.balanced_sampler else None,
        )
        return DataLoader(
            ImageBatches(dataset, sampler.plan(0)),
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_skipping_none,
        )

    def _balanced_sampler(self, dataset: MuraImageDataset) -> WeightedRandomSampler:
        """Draws normal and abnormal images equally often."""
        labels = dataset.labels.long()
        per_class = torch.bincount(labels, minlength=2).clamp(min=1).float()
        generator = torch.Generator().manual_seed(self.seed)
        return WeightedRandomSampler(1.0 / per_class[labels], num_samples=len(dataset), generator=generator)

    def on_after_batch_transfer(self, batch: dict | None, dataloader_idx: int) -> dict | None:
        """With gpu_augment: flip and rotate training batches, normalise every batch, on the device. In training
        under DDP, a batch some rank lacks is None on every rank (see `missing_on_some_rank`)."""
        if self.missing_on_some_rank(batch):
            return None
        if not self.gpu_augment:
            return batch
        return self.device_transform(batch, train=self.trainer is not None and self.trainer.training)

    def missing_on_some_rank(self, batch: dict | None) -> bool:
        """Whether this training step has no batch on some DDP rank (every image of it unreadable, on_error=skip):
        Lightning skips a None batch, so every rank must skip that step together, or the others would wait in the
        gradients' all-reduce. One collective per step, only under DDP with on_error=skip."""
        trainer = self.trainer
        if trainer is None or not trainer.training or self.on_error != "skip" or trainer.world_size < 2:
            return batch is None
        return trainer.strategy.reduce_boolean_decision(batch is None, all=False)

    def device_transform(self, batch: dict, train: bool) -> dict:
        """A uint8 batch (gpu_augment) normalised on its device, and first flipped and rotated when `train`, with
        this process's draws (`augment_generator`)."""
        images = self.batch_augment(batch["image"], self.augment_generator()) if train else batch["image"]
        return {**batch, "image": self.eval_preset.normalize(images)}

    def augment_generator(self) -> torch.Generator:
        """The generator of the batch augmentation's draws, seeded with `seed` + the DDP rank (made on first use),
        so that every rank flips and rotates its batches differently and a run repeats its draws."""
        if self._augment_generator is None:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            self._augment_generator = torch.Generator().manual_seed(self.seed + rank)
        return self._augment_generator

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
