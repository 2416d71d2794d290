"""What the tests run and compose: the project's configs composed as a Hydra app sees them, tiny CPU training runs,
entry points in a subprocess, evaluate and predict in this process, and prediction files read back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_module(module: str, *args: str, cwd: Path = REPO_ROOT, timeout: int = 600, env=None):
    """`python -m module args...` in a subprocess; the CompletedProcess with its output as text."""
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def wait_for(condition, timeout_s: float, what: str, process: subprocess.Popen):
    """What `condition()` returns once it is true, polled while the command `process` runs; fails the test (killing
    the process on a timeout) when the command ends first or nothing comes within `timeout_s`."""
    import time

    import pytest

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            pytest.fail(f"the command ended before {what}: {process.stderr.read()[-3000:]}")
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"no {what} within {timeout_s} s")


def compose(config_name: str, overrides: list[str]):
    """The project's config `config_name` composed with overrides, as a Hydra app would see it (the `hydra`
    node is set in HydraConfig and left out of the returned config)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def build_datamodule(root: Path, *overrides: str):
    """The MURADataModule of the train config (32 px, batch 4, no workers) on `root`, handed the model's
    preprocessing as train does."""
    from omegaconf import OmegaConf

    from mura_lightning.config import instantiate

    cfg = compose(
        "train",
        [
            f"data.root={root}",
            "model.preprocessing.image_size=32",
            "data.batch_size=4",
            "data.num_workers=0",
            *overrides,
        ],
    )
    preprocessing = OmegaConf.to_container(cfg.model.preprocessing, resolve=True)
    return instantiate(cfg.data, preprocessing=preprocessing, _convert_="all")


def run_evaluate(out: Path, ckpt_path: str, *overrides: str) -> dict:
    """`evaluate` of a checkpoint (or a `[a,b]` ensemble) on its training data's valid split, writing into `out`."""
    from mura_lightning.evaluate import evaluate

    overrides = [f"paths.root_dir={out}", f"paths.output_dir={out}", "data.num_workers=0", *overrides]
    return evaluate(compose("evaluate", [*overrides, f"ckpt_path={ckpt_path}"]))


def run_predict(out: Path, ckpt_path: str, source: Path, *overrides: str):
    """`predict` of `source` with a checkpoint, writing into `out`; the predictions table."""
    from mura_lightning.predict import predict

    return predict(
        compose("predict", [f"ckpt_path={ckpt_path}", f"input={source}", f"output={out}", "num_workers=0", *overrides])
    )


def tiny_run_overrides(root: Path, out: Path) -> list[str]:
    """Overrides for a CPU training run of a few seconds on a small tree: 32 px, one epoch, no workers."""
    return [
        f"data.root={root}",
        f"paths.root_dir={out}",
        f"paths.output_dir={out}/run",
        "bodypart=[shoulder,wrist]",
        "model.preprocessing.image_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "data.val_fraction=0.3",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
    ]


def compose_run(root: Path, out: Path, *overrides: str):
    """The train config for a tiny CPU run on `root`, writing into `out`/run."""
    return compose("train", [*tiny_run_overrides(root, out), *overrides])


def read_predictions(folder: Path, level: str, stage: str = "test"):
    """The `level` (image or study) rows of a run or evaluate folder's prediction file for `stage`."""
    import pandas as pd

    table = pd.read_csv(folder / f"predictions_{stage}.csv", dtype={"patient": str})
    return table[table["level"] == level].drop(columns="level").reset_index(drop=True)


def ddp_results(root: Path, out: Path, ckpt_path: str, *overrides: str) -> dict:
    """The results.json of validating and testing `ckpt_path` under trainer=ddp_cpu (2 processes) with the tiny
    run's settings and `overrides`, written into `out`/ddp."""
    import json

    common = [o for o in tiny_run_overrides(root, out) if not o.startswith("paths.output_dir")]
    finished = run_module(
        "mura_lightning.train",
        *common,
        *overrides,
        "train=false",
        f"ckpt_path={ckpt_path}",
        "trainer=ddp_cpu",
        f"paths.output_dir={out}/ddp",
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads((out / "ddp" / "results.json").read_text())


def assert_same_metrics(ddp: dict, results: dict, skipped: tuple[str, ...] = ("loss", "seconds")) -> None:
    """Every val and test metric of `results` (but names ending in `skipped`) equals `ddp`'s to 1e-5."""
    import pytest

    compared = [key for key in results if key.startswith(("val/", "test/")) and not key.endswith(skipped)]
    assert len(compared) > 100
    for key in compared:
        assert ddp[key] == pytest.approx(results[key], abs=1e-5, nan_ok=True), key
