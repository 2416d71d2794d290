"""logger=mlflow and logger=many against a real MLflow server (SQLite backend, artifacts served by it) started
here on the loopback: a sweep's runs, parameters, metrics and artifacts, and the registered checkpoints, read back
through MLflow's client; an address where no server answers stops train before anything is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.mura_trees import standard_studies, write_tree
from helpers.runs import run_module, tiny_run_overrides
from helpers.servers import free_port, wait_until_answering

SERVER_START_TIMEOUT_S = 300  # about 15 s on an idle 2-core machine; much more under a full test run
MODEL_NAME = "mura-densenet169"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The tracking URI of an `mlflow server` on 127.0.0.1 (a free port), SQLite backend, stopped at the end."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    uri = f"http://127.0.0.1:{free_port()}"
    log = folder / "server.log"
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1],
        "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_answering(f"{uri}/health", server, log, SERVER_START_TIMEOUT_S)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # its store is thrown away: no need to wait for a clean shutdown
        server.wait(timeout=20)


@pytest.fixture(scope="module")
def tracked_sweep(mlflow_server, tmp_path_factory):
    """A 2-job sweep (shoulder, wrist) with logger=many tracking to the server; its job folders."""
    tmp = tmp_path_factory.mktemp("tracked")
    root = write_tree(tmp, standard_studies())
    overrides = [o for o in tiny_run_overrides(root, tmp) if not o.startswith(("paths.output_dir", "bodypart"))]
    finished = run_module(
        "mura_lightning.train",
        "-m",
        *overrides,
        "bodypart=shoulder,wrist",
        "trainer.limit_train_batches=1",
        "callbacks.cam=null",
        "callbacks.metrics_report=null",
        "logger=many",
        f"logger.mlflow.tracking_uri={mlflow_server}",
        f"hydra.sweep.dir={tmp}/sweep",
        cwd=tmp,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return sorted(path for path in (tmp / "sweep").iterdir() if path.is_dir())


def test_a_sweep_gives_one_mlflow_run_per_job_with_its_settings_metrics_and_outputs(mlflow_server, tracked_sweep):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("mura-lightning")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == [job.name for job in tracked_sweep]
    for job in tracked_sweep:
        run, results = runs[job.name], json.loads((job / "results.json").read_text())
        assert run.info.status == "FINISHED"
        assert run.data.params["data/body_parts"] == str(results["body_parts"])
        assert run.data.params["model/backbone/name"] == "densenet169"
        assert run.data.params["trainer/max_epochs"] == "1"
        for name in ("val/study/kappa", "test/study/kappa", "test/study/auroc", "test/image/accuracy"):
            assert run.data.metrics[name] == pytest.approx(results[name], nan_ok=True), name
        assert "train/loss_epoch" in run.data.metrics or "train/loss" in run.data.metrics
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert {"results.json", "predictions_test.csv", "predictions_val.csv", "metrics_by_bodypart.csv"} <= artifacts
        assert {"config.yaml", ".hydra", "train.log", "checkpoints"} <= artifacts
        config = Path(client.download_artifacts(run.info.run_id, "config.yaml")).read_text()
        assert f"body_parts:\n  - {results['body_parts'][0]}" in config and "${" not in config
        downloaded = json.loads(Path(client.download_artifacts(run.info.run_id, "results.json")).read_text())
        assert downloaded == results


def test_each_jobs_best_checkpoint_is_a_model_version_tagged_with_its_metrics(mlflow_server, tracked_sweep):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert len(versions) == len(tracked_sweep)
    by_run = {client.get_run(version.run_id).info.run_name: version for version in versions}
    for job in tracked_sweep:
        version, results = by_run[job.name], json.loads((job / "results.json").read_text())
        assert float(version.tags["test/study/kappa"]) == pytest.approx(results["test/study/kappa"], abs=1e-5)
        assert float(version.tags["val/study/auroc"]) == pytest.approx(results["val/study/auroc"], abs=1e-5)
        checkpoint = Path(results["ckpt_path"])
        assert version.source.endswith(f"checkpoints/{checkpoint.name}")
        copy = client.download_artifacts(version.run_id, f"checkpoints/{checkpoint.name}")
        assert Path(copy).read_bytes() == checkpoint.read_bytes()


def test_the_default_local_store_keeps_the_run_its_outputs_and_the_registered_checkpoint(tmp_path):
    """A plain folder as tracking_uri (the default, outputs/mlruns) is a SQLite store with its artifacts beside."""
    from mlflow import MlflowClient

    from mura_lightning.tracking.mlflow_run import MLflowRunLogger

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "results.json").write_text('{"test/study/kappa": 0.25}')
    (run_dir / "tensorboard").mkdir()
    (run_dir / "tensorboard" / "events.out").write_text("events")
    checkpoint = run_dir / "checkpoints" / "best-epoch000.ckpt"
    checkpoint.write_bytes(b"weights")
    tracker = MLflowRunLogger(
        run_dir=str(run_dir), tracking_uri=str(tmp_path / "mlruns"), experiment_name="e", registered_model_name="m"
    )
    tracker.log_hyperparams({"model": {"backbone": {"name": "densenet169"}}})
    tracker.log_metrics({"test/study/kappa": 0.25}, step=0)
    tracker.log_outputs("seed: 42\n", str(checkpoint), {"test/study/kappa": 0.25, "test/study/auroc": float("nan")})
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = client.get_run(tracker.run_id)
    assert (run.info.run_name, run.info.status) == ("run", "FINISHED")
    assert run.data.params == {"model/backbone/name": "densenet169"}
    assert run.data.metrics == {"test/study/kappa": 0.25}
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"results.json", "config.yaml", "checkpoints"}  # no TensorBoard events
    (version,) = client.search_model_versions("name='m'")
    assert version.tags == {"test/study/kappa": "0.25"}  # NaN metrics are left out
    assert Path(client.download_artifacts(run.info.run_id, "checkpoints/best-epoch000.ckpt")).read_bytes() == b"weights"
    assert (tmp_path / "mlruns" / "artifacts").is_dir()


def test_an_address_where_no_server_answers_stops_train_at_once_naming_it(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    root = write_tree(tmp_path, standard_studies())
    started = time.monotonic()
    finished = run_module(
        "mura_lightning.train",
        *tiny_run_overrides(root, tmp_path),
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={uri}",
        cwd=tmp_path,
    )
    assert finished.returncode == 2, finished.stderr[-3000:]
    last_line = finished.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: logger.mlflow.tracking_uri={uri}: no MLflow server answers there"), last_line
    assert "Traceback" not in finished.stderr
    assert time.monotonic() - started < 60
    assert sorted(path.name for path in tmp_path.iterdir()) == ["MURA-v1.1"]  # no run folder, no mlruns
