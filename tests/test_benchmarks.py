"""The benchmark scripts run and print their figures as name=value lines (tiny sizes; speed is not tested)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT


def run_benchmark(script: str, *args: str) -> dict[str, str]:
    finished = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    lines = finished.stdout.strip().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and " " not in line)


def test_data_pipeline_benchmark_prints_the_ratio(mura_root):
    figures = run_benchmark("data_pipeline.py", f"--root={mura_root}", "--size=32", "--images=16", "--batch-size=4")
    assert float(figures["cache_over_raw_1_workers"]) > 0
    assert float(figures["raw_cpu_ms_per_image"]) > 0
    assert "device_augment_ms_per_image_cpu" in figures


def test_train_step_benchmark_prints_the_ratio():
    figures = run_benchmark(
        "train_step.py", "--backbone=resnet50", "--size=32", "--batch-size=4", "--steps=2", "--rounds=1"
    )
    assert float(figures["plain_images_per_s"]) > 0 and float(figures["lightning_over_plain"]) > 0


def test_cam_benchmark_prints_seconds():
    figures = run_benchmark("cam.py", "--images=2", "--size=32", "--repeats=1")
    assert float(figures["cam_seconds_densenet169"]) > 0


def test_gpu_benchmark_runs_its_code_on_the_cpu():
    figures = run_benchmark(
        "gpu.py",
        "--device=cpu",
        "--size=32",
        "--batch-size=2",
        "--steps=1",
        "--backbones=resnet50",
        "--no-compile",
        "--pipeline-images=100",
        "--workers=0",
    )
    speeds = [key for key in figures if key.endswith("_images_per_s") and key.startswith("resnet50_")]
    assert sorted(speeds) == [f"resnet50_{p}_{m}_images_per_s" for p in ("bf16", "fp32") for m in ("nchw", "nhwc")]
    assert float(figures["resnet50_bf16_nhwc_mura_epoch_s"]) > 0
    assert float(figures["pipeline_cache_gpu_augment_images_per_s"]) > 0


def test_bootstrap_benchmark_prints_the_ratio_and_coverage():
    figures = run_benchmark(
        "bootstrap.py",
        "--samples=100",
        "--sklearn-samples=2",
        "--coverage",
        "--repetitions=2",
        "--coverage-patients=30",
    )
    assert float(figures["bootstrap_seconds"]) > 0 and float(figures["sklearn_over_bootstrap"]) > 0
    assert 0 <= float(figures["coverage_kappa"]) <= 1
