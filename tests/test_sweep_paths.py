"""Sweep job folders need no quoting: a checkpoint path in one passes as `ckpt_path=` unquoted, evaluate runs as
a multirun (the `mura.dirname` resolver is there for every entry point), and old folders named with `=` and `,`
work with the quoting the README gives."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from helpers.runs import compose, run_module, tiny_run_overrides
from hydra.errors import OverrideParseException

from mura_lightning.resolvers import MAX_DIRNAME_LENGTH, job_dirname
from mura_lightning.runs import read_job

SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
OLD_STYLE = "0_bodypart=shoulder,data.image_size=32"


@pytest.mark.parametrize(
    "overrides",
    [
        "bodypart-[hand,wrist]__data.image_size-64",
        "data.root-/data/MURA v1.1/__+trainer.max_time-'00:01:00'__~callbacks.cam",
        "model.backbone.name-résnet__optimizer.lr-1e-4__x-{a: 1}",
        "model=resnet50,bodypart=hand",
        "a-" + "b" * 300,
    ],
)
def test_job_folder_names_hold_only_characters_no_shell_or_override_quotes(overrides):
    name = job_dirname(overrides)
    assert SAFE_NAME.fullmatch(name), name
    assert len(name) <= MAX_DIRNAME_LENGTH and not name.startswith((".", "-"))


def test_a_job_with_no_overrides_gets_a_name():
    assert job_dirname("") == "defaults"


def test_a_job_folder_name_keeps_keys_and_values_readable():
    assert job_dirname("bodypart-[hand,wrist]__model-resnet50") == "bodypart-hand_wrist__model-resnet50"


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
