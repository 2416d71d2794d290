"""Training app: config composition, 1-epoch runs per backbone and precision, resume, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from functools import partial

import pytest
import torch
from helpers.runs import REPO_ROOT, compose, compose_run, read_predictions, run_module, tiny_run_overrides
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mura_lightning.errors import MuraError
from mura_lightning.models.backbones import PretrainedWeightsError
from mura_lightning.models.loss_watch import NonFiniteLossError
from mura_lightning.train import build_model, train

GROUPS = [
    "data",
    "bodypart",
    "model",
    "pooling",
    "loss",
    "optimizer",
    "scheduler",
    "metrics",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "debug",
]
CPU_TRAINERS = {"default", "cpu", "ddp_cpu"}


def group_options():
    for group in GROUPS:
        for path in sorted((REPO_ROOT / "conf" / group).glob("*.yaml")):
            yield group, path.stem


@pytest.mark.parametrize(("group", "option"), list(group_options()))
def test_every_config_option_composes_and_resolves(tmp_path, group, option):
    cfg = compose("train", [f"{group}={option}", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["model"]["backbone"]["name"] in ("densenet169", "resnet50")
    assert not {"image_size", "mean", "std", "in_chans"} & set(plain["data"]), "preprocessing has one owner: the model"
    assert plain["model"]["preprocessing"]["in_chans"] in (1, 3) and "in_chans" not in plain["model"]["backbone"]
    if group == "loss":
        instantiate(cfg.loss)
    if group == "optimizer":
        instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    if group in ("callbacks", "logger"):
        assert all(instantiate(entry) is not None for entry in cfg[group].values() if entry is not None)
    if group == "trainer" and option in CPU_TRAINERS:
        instantiate(cfg.trainer, logger=False, enable_checkpointing=False)


def test_experiments_set_their_recipes(tmp_path):
    paper = compose("train", ["experiment=paper", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}"])
    assert paper.model.backbone.name == "densenet169" and paper.model.backbone.pretrained
    assert (paper.model.preprocessing.image_size, paper.data.batch_size, paper.data.rotation_degrees) == (320, 8, 30)
    assert paper.optimizer.lr == 1e-4 and list(paper.optimizer.betas) == [0.9, 0.999]
    assert paper.scheduler.builder.factor == 0.1 and paper.scheduler.monitor == "val/loss"
    assert paper.loss._target_.endswith("WeightedBCELoss")
    levers = (paper.model.channels_last, paper.data.cache, paper.data.gpu_augment, paper.optimizer.fused)
    assert levers == (True, True, True, True), "the GPU levers backed by a figure (README)"
    assert not paper.model.compile and paper.trainer.precision == "32-true", "not backed by a figure yet"
    gpu = compose("train", ["trainer=gpu", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}"])
    assert (gpu.trainer.accelerator, gpu.trainer.precision) == ("gpu", "32-true") and "benchmark" not in gpu.trainer
    demo = compose("train", ["experiment=demo", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}"])
    assert demo.data._target_.endswith("SyntheticMURADataModule") and demo.model.preprocessing.image_size == 128
    assert not demo.model.backbone.pretrained and demo.trainer.accelerator == "cpu"


def read_results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=densenet169"],
        ["model=resnet50", "model.preprocessing.in_chans=1"],
        ["trainer.precision=bf16-mixed", "model.channels_last=true"],
    ],
    ids=["densenet169", "resnet50-gray", "bf16-mixed"],
)
def test_one_epoch_run_tests_the_best_checkpoint_and_writes_results(mura_root, tmp_path, overrides):
    cfg = compose_run(mura_root, tmp_path, *overrides)
    results = train(cfg)
    run_dir = tmp_path / "run"
    assert read_results(run_dir) == json.loads(json.dumps(results))
    for key in ("val/study/kappa", "test/study/kappa", "test/study/auroc", "val/loss", "test/image/accuracy"):
        assert isinstance(results[key], float)
    assert results["model"] == cfg.model.backbone.name
    assert results["body_parts"] == ["shoulder", "wrist"]
    assert results["ckpt_path"].startswith(str(run_dir / "checkpoints" / "best-epoch"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_results_match_a_rerun_of_the_saved_checkpoint(mura_root, tmp_path):
    results = train(compose_run(mura_root, tmp_path))
    again = train(compose_run(mura_root, tmp_path / "again", "train=false", f"ckpt_path={results['ckpt_path']}"))
    for key in ("test/study/kappa", "test/study/auroc", "test/image/accuracy", "val/study/kappa"):
        assert again[key] == pytest.approx(results[key], abs=1e-6)


def test_resume_restores_epoch_optimizer_and_scheduler(mura_root, tmp_path):
    train(compose_run(mura_root, tmp_path / "first", "trainer.max_epochs=2", "test=false"))
    last = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    probe = tmp_path / "probe.pt"
    train(
        compose_run(
            mura_root,
            tmp_path / "resumed",
            f"ckpt_path={last}",
            "trainer.max_epochs=3",
            "test=false",
            "+callbacks.probe._target_=helpers.fakes.ResumeProbe",
            f"+callbacks.probe.path={probe}",
        )
    )
    start = torch.load(probe, weights_only=True)
    assert start["epoch"] == saved["epoch"] + 1 == 2
    assert start["global_step"] == saved["global_step"] > 0
    assert start["scheduler"] == saved["lr_schedulers"][0]
    expected_optimizer = saved["optimizer_states"][0]
    assert start["optimizer"]["param_groups"] == expected_optimizer["param_groups"]
    for key, state in expected_optimizer["state"].items():
        torch.testing.assert_close(start["optimizer"]["state"][key]["exp_avg"], state["exp_avg"])
        torch.testing.assert_close(start["optimizer"]["state"][key]["step"], state["step"])


def test_a_killed_run_resumes_from_its_last_checkpoint(mura_root, tmp_path):
    command = [
        sys.executable,
        "-m",
        "mura_lightning.train",
        *tiny_run_overrides(mura_root, tmp_path),
        "trainer.max_epochs=1000",
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    try:
        while not last.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert last.exists(), "the run never wrote last.ckpt"
    saved = torch.load(last, weights_only=True)
    results = train(
        compose_run(mura_root, tmp_path / "resumed", f"ckpt_path={last}", f"trainer.max_epochs={saved['epoch'] + 2}")
    )
    assert (tmp_path / "resumed" / "run" / "results.json").is_file()
    resumed_last = torch.load(tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed_last["epoch"] == saved["epoch"] + 1
    assert resumed_last["global_step"] > saved["global_step"]
    assert "test/study/kappa" in results


def test_nan_loss_stops_training_naming_the_step(mura_root, tmp_path):
    cfg = compose_run(
        mura_root, tmp_path, "loss._target_=helpers.fakes.NaNLoss", "~loss.alpha", "~loss.gamma", "loss=focal"
    )
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 0, global step 1 \(batch 1\)"):
        train(cfg)


def test_pretrained_offline_is_a_clear_error_not_random_weights(mura_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    cfg = compose_run(mura_root, tmp_path, "model.backbone.pretrained=true")
    with pytest.raises(PretrainedWeightsError, match=str(tmp_path / "torch" / "hub" / "checkpoints")):
        build_model(cfg)


def test_testing_only_needs_a_checkpoint(mura_root, tmp_path):
    with pytest.raises(MuraError, match="train=false needs ckpt_path=FILE"):
        train(compose_run(mura_root, tmp_path, "train=false"))


run_cli = partial(run_module, "mura_lightning.train")


@pytest.mark.parametrize(
    ("override", "choice"),
    [("model=densenet121", "resnet50"), ("bodypart=knee", "shoulder"), ("pooling=median", "gated_attention")],
)
def test_wrong_choice_lists_the_valid_ones(override, choice, tmp_path):
    result = run_cli(override, f"paths.log_dir={tmp_path}")
    group, value = override.split("=")
    assert result.returncode == 2
    assert f"{override}: {group} has no option '{value}'; its options are" in result.stderr
    assert choice in result.stderr and "Traceback" not in result.stderr


def test_bad_value_is_a_one_line_error_with_exit_code_2(mura_root, tmp_path):
    result = run_cli(*tiny_run_overrides(mura_root, tmp_path), "data.val_fraction=1.5")
    assert result.returncode == 2
    assert "error: data.val_fraction=1.5 must lie strictly between 0 and 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "run" / "error.txt").is_file()


@pytest.mark.parametrize("rank", [None, ("LOCAL_RANK", "1"), ("RANK", "1")])
def test_error_txt_is_written_by_rank_0_only(tmp_path, rank):
    """A DDP rank > 0 (as Lightning's launcher or torchrun starts one) shares rank 0's folder: when it fails, its
    error goes to its log, not to error.txt (a requeued two-node run's rank 1 once left one beside the finished
    run's results)."""
    env = None if rank is None else {**os.environ, rank[0]: rank[1]}
    result = run_cli("train=false", f"paths.output_dir={tmp_path}/run", f"paths.log_dir={tmp_path}", env=env)
    assert result.returncode == 2
    assert "error: train=false needs ckpt_path=FILE" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "run" / "error.txt").is_file() == (rank is None)


def multirun(root, tmp_path, *args):
    """A tiny sweep launched from tmp_path with neither paths.* nor hydra.sweep.dir, as users launch one; the
    result and its folder, outputs/multirun/<date>_<time>/ (the only one: a DDP rank starting a sweep of its
    own would add one)."""
    overrides = [o for o in tiny_run_overrides(root, tmp_path) if not o.startswith(("paths.", "bodypart"))]
    result = run_cli("-m", *overrides, *args, cwd=tmp_path)
    sweeps = list((tmp_path / "outputs" / "multirun").glob("*"))
    assert len(sweeps) == 1, f"{len(sweeps)} sweep folders: {result.stderr[-3000:]}"
    return result, sweeps[0]


def job_dirs(sweep):
    return sorted(path for path in sweep.iterdir() if path.is_dir())


def test_multirun_over_body_parts_writes_one_folder_per_job(mura_root, tmp_path):
    result, sweep = multirun(mura_root, tmp_path, "bodypart=shoulder,wrist")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(sweep)
    assert [job.name.split("__")[0] for job in jobs] == ["0_bodypart-shoulder", "1_bodypart-wrist"]
    assert [read_results(job)["body_parts"] for job in jobs] == [["shoulder"], ["wrist"]]


def test_a_failing_job_is_reported_and_the_others_keep_their_results(mura_root, tmp_path):
    result, sweep = multirun(mura_root, tmp_path, "bodypart=shoulder", "data.val_fraction=0.3,1.5")
    assert result.returncode != 0
    assert "data.val_fraction=1.5 must lie strictly between 0 and 1" in result.stderr
    good, bad = job_dirs(sweep)
    assert (good.name.split("__")[0], bad.name.split("__")[0]) == ("0_data.val_fraction-0.3", "1_data.val_fraction-1.5")
    assert read_results(good)["body_parts"] == ["shoulder"]
    assert not (bad / "results.json").exists()
    assert "data.val_fraction=1.5" in (bad / "error.txt").read_text()


def test_ddp_cpu_multirun_keeps_every_rank_in_its_job_folder(mura_root, tmp_path):
    result, sweep = multirun(mura_root, tmp_path, "trainer=ddp_cpu", "bodypart=shoulder,wrist")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(sweep)
    assert [job.name.split("__")[0] for job in jobs] == ["0_bodypart-shoulder", "1_bodypart-wrist"]
    for job in jobs:
        assert read_results(job)["test/study/kappa"] is not None
        assert (job / "train_ddp_process_1.log").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["MURA-v1.1", "outputs"], "a rank wrote elsewhere"
    assert [path.name for path in (tmp_path / "outputs").iterdir()] == ["multirun"], "a rank started its own run"
    assert len(job_dirs(sweep)) == 2


def test_the_slurm_launcher_sizes_each_job_from_the_trainer_config():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        single = hydra_compose("train", overrides=["hydra/launcher=slurm", "trainer=gpu"], return_hydra_config=True)
    assert (single.hydra.launcher.nodes, single.hydra.launcher.tasks_per_node) == (1, 1)


def test_a_sweep_runs_under_the_submitit_launcher(mura_root, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result, sweep = multirun(mura_root, tmp_path, "hydra/launcher=submitit_local", "bodypart=shoulder,wrist")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [job for job in job_dirs(sweep) if not job.name.startswith(".")]
    assert [read_results(job)["body_parts"] for job in jobs] == [["shoulder"], ["wrist"]]


def test_experiment_cv_runs_one_job_per_fold_each_keeping_its_out_of_fold_predictions(mura_root, tmp_path):
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    result, sweep = multirun(mura_root, tmp_path, "experiment=cv", "data.num_folds=2", "bodypart=[shoulder,wrist]")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    val_studies = []
    for fold, job in enumerate(jobs):
        assert f"data.fold={fold}" in OmegaConf.load(job / ".hydra" / "overrides.yaml")
        results = read_results(job)
        studies = read_predictions(job, "study", "val")
        assert read_predictions(job, "study", "test")["study"].str.startswith("valid/").all()
        assert roc_auc_score(studies["label"], studies["prob"]) == pytest.approx(results["val/study/auroc"], abs=1e-6)
        kappa = cohen_kappa_score(studies["label"], studies["pred"])
        assert kappa == pytest.approx(results["val/study/kappa"], abs=1e-6)
        val_studies.append(set(studies["study"]))
    assert val_studies[0].isdisjoint(val_studies[1])
    train_studies = {path.parent.relative_to(mura_root).as_posix() for path in mura_root.glob("train/*/*/*/*.png")}
    assert val_studies[0] | val_studies[1] == train_studies
