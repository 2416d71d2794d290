"""What a newcomer types wrong on the command line: one line saying what and what to do, exit code 2, no
traceback, and no run folder where nothing ran."""

from __future__ import annotations

import pytest
from helpers.runs import compose_run, run_module

from mura_lightning.cli import OverrideError, check_command_line
from mura_lightning.errors import MuraError
from mura_lightning.inference.checkpoints import CheckpointError, check_checkpoints
from mura_lightning.train import train

PARTS = "all, elbow, finger, forearm, hand, humerus, shoulder, wrist"


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        (
            "mura_lightning.train",
            ["trainer.max_epoch=1"],
            "error: trainer.max_epoch=1: trainer has no key 'max_epoch'; did you mean trainer.max_epochs? "
            "(+trainer.max_epoch=1 adds it as a new key)",
        ),
        (
            "mura_lightning.train",
            ["-m", "bodypart=shoulder,[hand,wirst]"],
            f"error: bodypart=[hand,wirst]: bodypart has no option 'wirst'; its options are {PARTS}; "
            "did you mean wrist?",
        ),
        (
            "mura_lightning.evaluate",
            ["ckpt_path=runs/missing.ckpt"],
            "error: ckpt_path=runs/missing.ckpt does not exist; pass a .ckpt from <run>/checkpoints/",
        ),
    ],
)
def test_a_mistyped_command_is_one_line_and_exit_code_2(tmp_path, module, args, message):
    finished = run_module(module, *args, cwd=tmp_path, timeout=300)
    assert finished.returncode == 2, finished.stderr
    assert message in finished.stderr.strip().splitlines()[-1], finished.stderr
    assert "Traceback" not in finished.stderr and "HYDRA_FULL_ERROR" not in finished.stderr
    assert list(tmp_path.iterdir()) == []  # refused before Hydra started the job: no run folder


def test_resuming_from_a_missing_checkpoint_is_refused_before_the_data_is_read(tmp_path):
    """It once ended in a Lightning traceback after indexing the data."""
    cfg = compose_run(tmp_path / "no-data", tmp_path, f"ckpt_path={tmp_path}/runs/last.ckpt")
    with pytest.raises(MuraError, match=f"ckpt_path={tmp_path}/runs/last.ckpt does not exist: pass the checkpoint"):
        train(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["traner.max_epochs=1"], r"traner.max_epochs=1: the configuration has no key 'traner'; did you mean "),
        (["modell=resnet50"], r"modell=resnet50: the configuration has no key 'modell'; did you mean model\?"),
        (["optimizer.zzz=1"], r"optimizer.zzz=1: optimizer has no key 'zzz'; its keys are .*lr"),
        (["data=synthetic", "data.synthetic.studies_per_partt=3"], r"did you mean data.synthetic.studies_per_part\?"),
        (["model=densenet121"], r"model=densenet121: model has no option 'densenet121'; its options are densenet169"),
        (["-m", "trainer=cpu,gpux"], r"trainer=gpux: trainer has no option 'gpux'.*did you mean gpu\?"),
    ],
)
def test_overrides_hydra_cannot_apply_are_named_with_their_close_matches(overrides, message):
    with pytest.raises(OverrideError, match=message):
        check_command_line("train", overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["-m", "model=densenet169,resnet50", "bodypart=shoulder,wrist", "+trainer.foo=1"],
        ["hydra/launcher=slurm", "hydra.run.dir=/tmp/x", "optimizer.lr=interval(1e-5,1e-3)"],
        ["--cfg", "job", "experiment=demo"],
        ["--help"],
        ["ckpt_path=${oc.env:NOWHERE}"],
    ],
)
def test_commands_hydra_accepts_pass_the_check(overrides):
    check_command_line("train", overrides)


def test_the_evaluate_check_stops_at_a_missing_checkpoint_before_hydra(tmp_path):
    with pytest.raises(CheckpointError, match=f"ckpt_path={tmp_path}/gone.ckpt does not exist"):
        check_command_line("evaluate", [f"ckpt_path=[{tmp_path}/gone.ckpt]"], check_checkpoints)
    check_command_line("evaluate", [], check_checkpoints)  # ckpt_path ??? is for the job to report


def test_a_sweep_over_a_key_is_composed_once_and_one_over_a_group_once_per_option(monkeypatch):
    from mura_lightning import cli

    composed = []
    monkeypatch.setattr(cli, "_compose", lambda name, overrides: composed.append(overrides))
    check_command_line("train", ["-m", "seed=range(50)", "bodypart=shoulder,wrist,hand"])
    assert composed == [
        ["seed=0", "bodypart=shoulder"],
        ["seed=0", "bodypart=wrist"],
        ["seed=0", "bodypart=hand"],
    ]
