"""The benchmark scripts run and print their figures as name=value lines (tiny sizes; speed is not tested)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.runs import REPO_ROOT
from test_gpu import CHECK_DATA


def run_benchmark(script: str, *args: str) -> dict[str, str]:
    finished = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},  # this checkout's package, whatever is installed
    )  # fmt: skip
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
        "train_step.py", "--backbone=resnet50", "--size=32", "--batch-size=4", "--steps=1", "--warmup-steps=1",
        "--rounds=1",
    )  # fmt: skip
    assert float(figures["plain_images_per_s"]) > 0 and float(figures["lightning_over_plain"]) > 0


def test_study_batches_benchmark_prints_the_ratio(mura_root, tmp_path):
    figures = run_benchmark(
        "study_batches.py", f"--root={mura_root}", f"--cache-dir={tmp_path}", "--backbone=resnet50", "--size=32",
        "--batch-size=4", "--steps=1", "--warmup-steps=1", "--rounds=1", "--workers=0", "--precision=32-true",
    )  # fmt: skip
    assert float(figures["image_batches_images_per_s"]) > 0 and float(figures["study_over_image_batches"]) > 0


def test_cam_benchmark_prints_seconds():
    figures = run_benchmark("cam.py", "--images=2", "--size=32", "--repeats=1")
    assert float(figures["cam_seconds_densenet169"]) > 0


def test_the_gpu_check_dry_run_passes_every_stage(tmp_path):
    """gpu_check.sh --dry-run: the GPU check's stages on the CPU at tiny sizes (so it keeps working between GPU
    loans). Its stage limits are generous: the run takes about a minute and a half on a 2-core machine (the paper
    stage about 20 s of it), several under load."""
    environment = {**os.environ, "PYTHON": sys.executable}
    finished = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=1000, env=environment,
    )  # fmt: skip
    results = json.loads((tmp_path / "gpu_results.json").read_text())
    assert finished.returncode == 0, finished.stdout[-3000:] + (tmp_path / "gpu_check.log").read_text()[-5000:]
    assert results["ok"] and results["dry_run"] and "CPU dry run" in results["card"]
    statuses = {name: stage["status"] for name, stage in results["stages"].items()}
    assert statuses == {
        "install": "ok", "data": "ok", "tests": "ok", "bench_eager": "ok",
        "bench_compiled": "skipped", "bench_autotune": "skipped", "paper": "ok",
    }  # fmt: skip
    assert results["test_counts"] == {"passed": 6, "skipped": 1}
    outcomes = {letter: check["outcome"] for letter, check in results["checks"].items()}
    assert outcomes == {**dict.fromkeys("abcde", "passed"), "f": "skipped"}, "(f) runs at 320 px on a GPU only"
    figures = results["figures"]
    assert figures["train_images_per_s/resnet50/bf16/nhwc"] > 0
    assert figures["train_images_per_s/resnet50/fp32/nchw/fused/nobench"] > 0
    assert figures["compile_failed/resnet50/fp32/nchw/compile"] == 1, "a compile cut short falls back to eager"
    assert "train_images_per_s/resnet50/fp32/nchw/compile" not in figures
    assert figures["pipeline_images_per_s/0_workers"] > 0
    assert figures["lightning_over_plain_min/resnet50/fp32/nchw"] <= figures["lightning_over_plain/resnet50/fp32/nchw"]
    assert figures["tree_train_images"] + figures["tree_valid_images"] > 40 and figures["cache_disk_mib"] > 0
    assert figures["generate_s"] > 0 and figures["index_s"] > 0 and figures["cache_s"] > 0
    stages_memory = [figures[f"peak_pss_mib/{stage}"] for stage in ("generate", "index", "cache")]
    assert min(stages_memory) > 50 and figures["peak_rss_mib/self"] > 50
    assert figures["epoch_train_images/resnet50"] == 4, "the batch of 4 after the first of the dry run's 2"
    (model,) = [value for name, value in figures.items() if name.startswith("model_images_per_s/resnet50/")]
    assert figures["epoch_over_model/resnet50"] == pytest.approx(figures["epoch_images_per_s/resnet50"] / model)
    assert results["goals"]["densenet169_epoch_over_model"]["target"] == 0.9
    assert results["goals"]["resnet50_epoch_over_model"]["value"] == figures["epoch_over_model/resnet50"]
    assert all(goal["met"] is None for goal in results["goals"].values()), "a dry run judges no goal"
    log = (tmp_path / "gpu_check.log").read_text()
    assert "== tests: ok" in log
    (data_stage,) = [line for line in log.splitlines() if line.startswith("== data (limit")]
    assert set(CHECK_DATA) <= set(data_stage.split()), "the data stage writes the tree the tests would write"


def test_the_gpu_check_refuses_unknown_stages_and_options_and_a_budget_below_its_stages(tmp_path):
    for arguments, budget, message in (
        (["--stages", "tests,bench_fast"], None, "unknown stage 'bench_fast'"),
        (["--fast"], None, "unknown option --fast"),
        ([], None, "usage: bash benchmarks/gpu_check.sh"),
        (["--stages", "part1"], "400", "the stages install,data,tests,bench_eager need 540 s"),
        (["--dry-run"], "100", "need 1020 s (their limits added up), more than GPU_CHECK_BUDGET_S=100"),
        (["--stages", "part3"], "300", "the stages install,paper need 390 s"),
    ):
        environment = {**os.environ, **({"GPU_CHECK_BUDGET_S": budget} if budget else {})}
        finished = subprocess.run(
            ["bash", "benchmarks/gpu_check.sh", *arguments, *([str(tmp_path)] if arguments else [])],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, env=environment,
        )  # fmt: skip
        assert finished.returncode == 2 and message in finished.stderr, finished.stderr


@pytest.fixture
def gpu_summary():
    """benchmarks/gpu_summary.py as a module."""
    import gpu_summary

    return gpu_summary


def test_an_interrupted_pytest_still_writes_junit_and_every_check_gets_an_outcome(tmp_path, gpu_summary):
    """gpu_check.sh stops a stage with SIGINT: pytest then writes its JUnit file, and the summary gives each check
    the source defines an outcome, "not run" for those pytest never reached."""
    checks = tmp_path / "test_checks.py"
    started = tmp_path / "started"
    checks.write_text(
        "import time\nfrom pathlib import Path\n\n\ndef test_a_passes():\n    pass\n\n\n"
        f"def test_b_hangs():\n    Path({str(started)!r}).touch()\n    time.sleep(120)\n\n\n"
        "def test_c_never_runs():\n    pass\n"
    )
    junit = tmp_path / "work" / "junit.xml"
    # SIGINT at its default in the child, as in a shell's foreground: a suite started in the background of a
    # non-interactive shell inherits it ignored, and Python then never raises KeyboardInterrupt
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", str(checks), "-p", "no:cacheprovider", f"--junitxml={junit}", "-q"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert junit.is_file(), "pytest stopped by SIGINT wrote no JUnit file"
    results = gpu_summary.summarise(junit.parent, dry_run=True, wall_s=None, tests_file=checks)
    outcomes = {letter: check["outcome"] for letter, check in results["checks"].items()}
    assert outcomes["a"] == "passed" and outcomes["c"] == "not run", outcomes
    assert outcomes["b"] in ("not run", "error", "failed", "skipped"), outcomes


@pytest.fixture
def gpu_benchmark():
    """benchmarks/gpu.py as a module (benchmarks/ is on pytest's pythonpath, so it imports its neighbours as a
    script does)."""
    import gpu

    return gpu


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("densenet169/bf16", "is not backbone/precision/layout"),
        ("densenet169/fp16/nhwc", "is not backbone/precision/layout"),
        ("resnet50/bf16/nhwc/turbo", "unknown option 'turbo'"),
        ("resnet50/bf16/nhwc/batch=x", "unknown option 'batch=x'"),
    ],
)
def test_a_bad_gpu_benchmark_variant_is_a_clear_error(gpu_benchmark, spec, message):
    with pytest.raises(ValueError, match=message):
        gpu_benchmark.Variant.parse(spec)


def test_gpu_benchmark_variants_expand_and_name_themselves(gpu_benchmark):
    Variant, expand = gpu_benchmark.Variant, gpu_benchmark.expand
    variants = expand(["levers", "compiled", "resnet50/bf16/nhwc/fused"], ["resnet50"], 64)
    names = [variant.name for variant in variants]
    assert names[:3] == ["resnet50/bf16/nhwc/nobench", "resnet50/bf16/nhwc/fused", "resnet50/bf16/nhwc/batch=128"]
    assert names[3] == "resnet50/bf16/nhwc/compile" and len(names) == 7, "the fused spec is listed once"
    assert all(Variant.parse(name) == variant for name, variant in zip(names, variants, strict=True))


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


@pytest.fixture
def paper_scale():
    """benchmarks/paper_scale.py as a module."""
    import paper_scale

    return paper_scale


def test_the_paper_scale_tree_has_muras_image_counts(paper_scale):
    """The generator's plan for the rehearsal's settings (no image drawn): MURA-v1.1's training and valid image
    counts within 1 %."""
    from mura_lightning.synthetic import load_spec
    from mura_lightning.synthetic.plan import plan_studies

    settings = paper_scale.generator_settings(studies_per_part=None, workers=None)
    plans = plan_studies(load_spec(root=".", **settings))
    for split, mura in paper_scale.MURA_IMAGES.items():
        images = sum(plan.images for plan in plans if plan.split == split)
        assert images == pytest.approx(mura, rel=0.01), split


def test_the_paper_scale_model_only_variant_follows_the_training_config(paper_scale):
    from helpers.runs import compose

    common = ["experiment=paper", "model=resnet50", "model.channels_last=true", "model.compile=true"]
    fast = compose("train", [*common, "trainer.precision=bf16-mixed", "++trainer.benchmark=true", "data.batch_size=64"])
    assert paper_scale.model_variant(fast).name == "resnet50/bf16/nhwc/compile/fused"
    plain = compose("train", [*common, "model.compile=false", "trainer.precision=32-true", "data.batch_size=16"])
    assert paper_scale.model_variant(plain).name == "resnet50/fp32/nhwc/fused/nobench/batch=16"
    with pytest.raises(SystemExit, match="trainer.precision=16-mixed: gpu.py measures"):
        paper_scale.model_variant(compose("train", [*common, "trainer.precision=16-mixed"]))


@pytest.mark.parametrize(
    ("stages", "device", "message"),
    [
        ("generate,train", None, "unknown stage 'train'; the stages are generate,index,cache,epoch"),
        ("cache,epoch", None, "the epoch stage needs --device cuda"),
    ],
)
def test_bad_paper_scale_stages_are_a_clear_error(paper_scale, stages, device, message):
    with pytest.raises(SystemExit, match=message):
        paper_scale.stage_list(stages, device)
