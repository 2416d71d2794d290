"""Sweep job folders need no quoting: a checkpoint path in one passes as `ckpt_path=` unquoted, evaluate runs as
a multirun (the `mura.*` resolvers are there for every entry point), long names keep whole overrides and stay
distinct, and old folders named with `=` and `,` work with the quoting the README gives."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from helpers.runs import compose, run_module, tiny_run_overrides
from hydra.errors import OverrideParseException

from mura_lightning.dirnames import HASH_LENGTH, MAX_DIRNAME_LENGTH, dirname, sweep_dirnames
from mura_lightning.runs import read_job

SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
OLD_STYLE = "0_bodypart=shoulder,data.image_size=32"
HASH = re.compile(rf"[0-9a-f]{{{HASH_LENGTH}}}")
LONG_FIXED = [  # what a tiny sweep appends: enough to push the model choice past the old 120-character cut
    "data.root=/data/MURA-v1.1",
    "callbacks.cam.localisation_images=2",
    "callbacks.cam.num_images=2",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "model.preprocessing.image_size=32",
    "trainer.limit_train_batches=1",
    "trainer.max_epochs=1",
]


@pytest.mark.parametrize(
    "overrides",
    [
        ["bodypart=[hand,wrist]", "data.image_size=64"],
        ["data.root=/data/MURA v1.1/", "+trainer.max_time='00:01:00'", "~callbacks.cam"],
        ["model.backbone.name=résnet", "optimizer.lr=1e-4", "x={a: 1}"],
        ["a=" + "b" * 300],
    ],
)
def test_job_folder_names_hold_only_characters_no_shell_or_override_quotes(overrides):
    name = dirname(overrides)
    assert SAFE_NAME.fullmatch(name), name
    assert len(name) <= MAX_DIRNAME_LENGTH and not name.startswith((".", "-"))


def test_a_job_with_no_overrides_gets_a_name():
    assert dirname([]) == "defaults"


def test_a_job_folder_name_keeps_keys_and_values_readable():
    assert dirname(["bodypart=[hand,wrist]", "model=resnet50"]) == "bodypart-hand_wrist__model-resnet50"


def whole_items(name: str, overrides: list[str]) -> list[str]:
    """The `key-value` items of a name but its hash, each checked to be a whole override."""
    items = name.split("__")
    if HASH.fullmatch(items[-1]):
        items = items[:-1]
    for item in items:
        assert any(dirname([override]) == item for override in overrides), f"{item!r} is cut inside a key or value"
    return items


def test_a_name_cut_short_keeps_whole_overrides_and_ends_in_a_hash_of_them_all():
    overrides = [*LONG_FIXED, "trainer.precision=bf16-mixed", "trainer.max_time=00:01:00:00"]
    name = dirname(overrides)
    assert len(name) <= MAX_DIRNAME_LENGTH and HASH.fullmatch(name.split("__")[-1]), name
    assert len(whole_items(name, overrides)) < len(overrides)
    assert dirname(list(reversed(overrides))).endswith(name.split("__")[-1]), "the hash does not depend on order"
    assert dirname(["a=1", "b=2"]) == "a-1__b-2", "a name that fits has no hash"


def test_names_cut_short_differ_when_only_the_overrides_left_out_differ():
    two, three = dirname([*LONG_FIXED, "trainer.max_epochs=2"]), dirname([*LONG_FIXED, "trainer.max_epochs=3"])
    assert two != three
    assert two.rsplit("__", 1)[0] == three.rsplit("__", 1)[0], "they share their readable part"


def test_sweep_job_names_start_with_the_overrides_that_differ_between_the_jobs():
    jobs = [
        [f"model={model}", f"bodypart={part}", *LONG_FIXED]
        for model in ("densenet169", "resnet50")
        for part in ("shoulder", "wrist")
    ]
    names = sweep_dirnames(jobs, exclude_keys={"data.root"})
    assert [name.split("__")[:2] for name in names] == [
        ["0_bodypart-shoulder", "model-densenet169"],
        ["1_bodypart-wrist", "model-densenet169"],
        ["2_bodypart-shoulder", "model-resnet50"],
        ["3_bodypart-wrist", "model-resnet50"],
    ]
    for name, job in zip(names, jobs, strict=True):
        assert len(name.split("_", 1)[1]) <= MAX_DIRNAME_LENGTH and "data.root" not in name
        whole_items(name.split("_", 1)[1], job)


def test_old_style_paths_pass_when_quoted_for_hydra(tmp_path):
    old = f"{tmp_path}/{OLD_STYLE}/checkpoints/best-epoch000.ckpt"
    assert compose("evaluate", [f"ckpt_path='{old}'"]).ckpt_path == old
    assert list(compose("evaluate", [f"ckpt_path=['{old}','{old}']"]).ckpt_path) == [old, old]
    assert compose("train", [f"ckpt_path='{old}'"]).ckpt_path == old
    with pytest.raises(OverrideParseException):
        compose("evaluate", [f"ckpt_path={old}"])


def test_a_sweep_checkpoint_evaluates_unquoted_in_an_evaluate_multirun(mura_root, tmp_path):
    quiet = ("paths.output_dir", "bodypart")
    overrides = [o for o in tiny_run_overrides(mura_root, tmp_path) if not o.startswith(quiet)]
    train_sweep = tmp_path / "train_sweep"
    trained = run_module(
        "mura_lightning.train", "-m", *overrides, "bodypart=shoulder", "test=false", f"hydra.sweep.dir={train_sweep}"
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    (job,) = [path for path in train_sweep.iterdir() if path.is_dir()]
    assert re.fullmatch(r"0_bodypart-shoulder__[A-Za-z0-9._-]+", job.name), job.name
    assert "bodypart=shoulder" in read_job(job).overrides, "summarize reads the overrides from .hydra/"
    ckpt = json.loads((job / "results.json").read_text())["ckpt_path"]
    old_style = tmp_path / OLD_STYLE / "checkpoints" / "best.ckpt"
    old_style.parent.mkdir(parents=True)
    shutil.copy(ckpt, old_style)

    eval_sweep = tmp_path / "eval_sweep"
    evaluated = run_module(
        "mura_lightning.evaluate",
        "-m",
        f"ckpt_path={ckpt},'{old_style}'",
        f"paths.root_dir={tmp_path}",
        "data.num_workers=0",
        f"hydra.sweep.dir={eval_sweep}",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    jobs = sorted(path for path in eval_sweep.iterdir() if path.is_dir())
    assert len(jobs) == 2 and all(SAFE_NAME.fullmatch(path.name) for path in jobs), jobs
    results = [json.loads((path / "results.json").read_text()) for path in jobs]
    assert results[0]["test/study/kappa"] == pytest.approx(results[1]["test/study/kappa"], nan_ok=True)


def named_sweeper(hydra_overrides: list[str], jobs: list[list[str]]):
    """The sweeper of conf/hydra/default.yaml, set up as Hydra's multirun sets it, with `jobs` in one batch."""
    from omegaconf import OmegaConf

    from hydra_plugins.mura_sweeper.sweeper import NamedJobSweeper

    sweeper = NamedJobSweeper(max_batch_size=None, params=None)
    hydra_cfg = {"overrides": {"hydra": hydra_overrides}, "job": {"config": {"override_dirname": {"exclude_keys": []}}}}
    sweeper.config = OmegaConf.create({"hydra": hydra_cfg})
    sweeper.overrides = [[list(job) for job in jobs]]
    return sweeper


def test_the_sweeper_names_each_job_unless_the_command_names_them():
    jobs = [["seed=1", "model=resnet50"], ["seed=2", "model=resnet50"]]
    named = named_sweeper([], jobs).get_job_batch()
    assert [job[-1] for job in named] == [
        "hydra.sweep.subdir=0_seed-1__model-resnet50",
        "hydra.sweep.subdir=1_seed-2__model-resnet50",
    ]
    assert named_sweeper(["hydra.sweep.subdir=mine"], jobs).get_job_batch() == jobs
