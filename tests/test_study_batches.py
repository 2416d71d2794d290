"""Study batches: whole studies packed up to the batch size, never split (not even across DDP ranks), the view cap
in training, the same number of batches every epoch, every view once in evaluation, and the datamodule serving them
with its cache and device augmentation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from helpers.mura_trees import Study, write_tree
from helpers.runs import build_datamodule
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from mura_lightning.data.study_batches import StudyBatchSampler, pack_studies
from mura_lightning.errors import MuraError

VIEWS = [1, 4, 2, 3, 11, 1, 2, 6, 3, 1, 2, 4, 5, 1]  # views per study, one of more than a batch


def image_studies(views=VIEWS) -> np.ndarray:
    """Each image's study id (ids not in order, images of a study not adjacent)."""
    studies = np.repeat(np.arange(len(views)) * 7 % 17, views)
    return studies[np.random.default_rng(0).permutation(len(studies))]


def studies_of(batch, studies) -> Counter:
    return Counter(studies[batch].tolist())


def test_packing_keeps_studies_whole_and_batches_within_capacity():
    batches = pack_studies(VIEWS, capacity=8)
    assert sorted(study for batch in batches for study in batch) == list(range(len(VIEWS)))
    for batch in batches:
        size = sum(VIEWS[s] for s in batch)
        assert size <= 8 or batch == [VIEWS.index(11)]
    assert len(batches) <= np.ceil(sum(VIEWS) / 8) + 2, "best fit leaves few gaps"


def test_evaluation_batches_hold_every_view_once_each_study_in_one_batch():
    studies = image_studies()
    sampler = StudyBatchSampler(studies, 8, train=False)
    batches = list(sampler)
    assert len(batches) == len(sampler) and list(sampler) == batches
    assert sorted(p for batch in batches for p in batch) == list(range(len(studies)))
    counts = Counter(studies.tolist())
    for batch in batches:
        assert all(counts[study] == n for study, n in studies_of(batch, studies).items()), "a study split"
        assert len(batch) <= 8 or len(set(studies[batch].tolist())) == 1, "a study larger than a batch is alone"


def test_training_caps_views_draws_new_subsets_each_epoch_and_keeps_the_batch_count():
    studies = image_studies()
    sampler = StudyBatchSampler(studies, 8, train=True, max_views=3, seed=1)
    epochs = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == sum(min(v, 3) for v in VIEWS) // 8
        for batch in batches:
            assert len(batch) <= 8 and len(set(batch)) == len(batch)
            assert max(studies_of(batch, studies).values()) <= 3
        seen = [Counter(studies[p] for batch in batches for p in batch)]
        assert all(n <= 3 for n in seen[0].values())
        epochs.append(batches)
    assert epochs[0] != epochs[1]
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1], "an epoch's batches depend on the seed and epoch only (resumable, DDP)"
    whole = StudyBatchSampler(studies, 8, train=True, seed=1)
    biggest = studies[np.argmax(np.bincount(studies))]
    assert all(studies_of(batch, studies)[biggest] <= 8 for batch in whole), "a study larger than a batch is cut"


def test_ddp_deals_out_whole_batches_equally_to_every_rank():
    """What Lightning does with this sampler under DDP: DistributedSamplerWrapper deals its batches to the ranks,
    padding with repeats; every rank gets as many batches, and no study is split between ranks."""
    studies = image_studies()
    for train in (True, False):
        sampler = StudyBatchSampler(studies, 8, train=train, seed=3)
        planned = [tuple(batch) for batch in sampler]
        ranks = [list(DistributedSamplerWrapper(sampler, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == -(-len(planned) // 2)
        assert {tuple(batch) for batches in ranks for batch in batches} == set(planned), "batches dealt whole"


def test_balanced_training_draws_both_labels_about_equally():
    studies = np.repeat(np.arange(40), 2)
    labels = (np.arange(80) < 16).astype(int)  # 8 abnormal studies of 40
    sampler = StudyBatchSampler(studies, 8, train=True, seed=0, balance_labels=labels)
    drawn = Counter()
    for epoch in range(10):
        sampler.set_epoch(epoch)
        drawn.update(int(labels[2 * study]) for batch in sampler for study in studies_of(batch, studies))
    share = drawn[1] / sum(drawn.values())
    assert 0.3 < share < 0.7


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_max_views_below_one_is_refused(bad):
    with pytest.raises(MuraError, match=rf"data.max_views={bad} must be a whole number of views, at least 1"):
        StudyBatchSampler(image_studies(), 8, train=True, max_views=bad)


def test_the_datamodule_serves_whole_studies_with_cache_and_device_augmentation(tmp_path):
    splits = (("train", 1), ("valid", 50))
    studies = [
        Study(split, "wrist", p, 1, p % 2, 1 + p % 4) for split, first in splits for p in range(first, first + 14)
    ]
    root = write_tree(tmp_path, studies)
    datamodule = build_datamodule(
        root, "data.cache=true", f"data.cache_dir={tmp_path}/cache", "data.gpu_augment=true", "data.max_views=2",
        "data.val_fraction=0.3", "bodypart=wrist",
    )  # fmt: skip
    datamodule.study_batches = True
    datamodule.prepare_data()
    datamodule.setup()
    table = datamodule.image_table()
    views = table.groupby("study_id").size()
    for loader, cap in ((datamodule.train_dataloader(), 2), (datamodule.test_dataloader(), None)):
        for batch in loader:
            assert batch["image"].dtype == torch.uint8 and len(batch["image"]) <= 4
            shown = Counter(batch["study"].tolist())
            for study, count in shown.items():
                assert count == (min(views[study], cap) if cap else views[study])
            moved = datamodule.device_transform(batch, train=cap is not None)
            assert moved["image"].dtype == torch.float32 and moved["image"].shape[1:] == (3, 32, 32)
    test_ids = set(table.loc[table["subset"] == "test", "image_id"])
    served = [i for batch in datamodule.test_dataloader() for i in batch["image_id"].tolist()]
    assert sorted(served) == sorted(test_ids)


def test_the_data_config_refuses_max_views_below_one(mura_root):
    with pytest.raises(MuraError, match="data.max_views=0 must be a whole number of views, at least 1"):
        build_datamodule(mura_root, "data.max_views=0")
