"""The GPU path against its CPU / fp32 references (`pytest -m gpu`; benchmarks/gpu_check.sh runs them on a lent
GPU): (a) a bf16-mixed + channels_last + compiled run learns and matches an fp32 run, (b) the batch augmentation
on the device equals the CPU's for one seed, (c) DDP (NCCL) over the GPUs present equals one process (skipped
with fewer than 2 GPUs; `trainer=ddp_cpu` against one process is the CPU's proof, tests/test_study_pooling.py and
others), (d) the CAMs of the bf16 + channels_last run's checkpoint on the device equal the CPU's, (e) evaluate and
predict on the device give the CPU's probabilities, (f) the paper's 320 px learns from scratch (ResNet-50, fp32,
channels_last, on the check's plain-lesion data; skipped on the CPU, where benchmarks/RESULTS.md has its
rehearsal). The fp32 references on the device run with TF32 off.

Skipped without CUDA. MURA_GPU_TEST_DEVICE=cpu runs the same code on the CPU at tiny sizes (the dry run of
gpu_check.sh), where nothing learns: the learning and bf16-vs-fp32 comparisons are then left out and the device
results are compared with themselves. MURA_GPU_TEST_DATA=DIR uses a synthetic MURA written there (the folder
holding MURA-v1.1/); otherwise the tests write one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.runs import compose, read_predictions, run_module
from torch.nn import functional as F

DEVICE_VARIABLE = "MURA_GPU_TEST_DEVICE"
DATA_VARIABLE = "MURA_GPU_TEST_DATA"
PROBABILITY_TOLERANCE = 1e-3  # (e) device vs CPU, per image
DDP_TOLERANCE = 1e-4  # (c) test metrics of DDP vs one process
CAM_TOLERANCE = 1e-3  # (d) per pixel of maps scaled to [0, 1], device vs CPU in fp32
AUGMENT_MAX_LEVELS = 1  # (b) gray levels a pixel may differ by (bilinear rounding)...
AUGMENT_MAX_SHARE = 1e-3  # ...and the share of pixels that may differ at all
CAM_MIN_SIZE = 64  # below it the CAM layer's maps are 1 x 1, so every CAM is flat
COMPARED_METRICS = ("test/study/auroc", "test/image/auroc")  # (a) bf16 vs fp32


@dataclass(frozen=True)
class Scale:
    """Sizes and tolerances of the checks on one kind of device."""

    device: str  # torch's name
    accelerator: str  # Lightning's name
    image_size: int
    batch_size: int
    num_workers: int
    max_epochs: int
    limit_batches: float | int  # training batches per epoch (val and test run whole, as DDP needs to compare)
    backbone: str
    compile: bool
    ddp_trainer: str
    ddp_devices: int  # 1 on the CPU: the command's code path, not a multi-rank proof
    studies_per_part: int  # when the tests write the data themselves
    callbacks: tuple[str, ...]  # overrides of the callbacks group: per-epoch figures off, they have their own tests
    min_auroc: float | None  # what a run must reach to count as learning; None: not checked
    auroc_tolerance: float | None  # bf16 vs fp32, absolute; None: not compared
    paper_epochs: int | None = None  # (f): epochs of the 320 px run; None: not run


# The check's synthetic MURA (gpu_check.sh's data stage writes the same): plain lesions, on every view of an
# abnormal study. With the generator's partial views (fractures and lytic spots on a random subset of a study's
# views, since issue 22) the second loan's fp32 reference of (a) reached study AUROC 0.786 in 8 epochs.
CHECK_DATA = ("seed=0", "difficulty=0", "lesion_views.fracture=all", "lesion_views.lytic=all")
PAPER_SIZE = 320  # (f): the MURA paper's image size
PAPER_MIN_AUROC = 0.85  # (f): test study AUROC it must reach


def scale_for(device: str) -> Scale:
    """The sizes for `device` (cuda: the real path at the demo's 128 px, which learns in minutes, and (f)'s 320 px
    run; cpu: seconds-long runs that check the code). (f) is the recipe rehearsed on the CPU (RESULTS.md): 8 epochs
    of the check's 1,279 training images at 320 px reached test study AUROC 0.981 (0.956-0.998); 320 px speed is
    benchmarks/gpu.py's job."""
    off = ("callbacks.cam=null", "callbacks.metrics_report=null", "callbacks.learning_rate_monitor=null")
    if device == "cuda":
        gpus = max(torch.cuda.device_count(), 1)
        return Scale("cuda", "gpu", 128, 32, 4, 8, 1.0, "resnet50", True, "ddp", gpus, 100, off, 0.8, 0.05, 8)
    if device == "cpu":
        return Scale("cpu", "cpu", 32, 4, 0, 1, 1, "resnet50", False, "ddp_cpu", 1, 6, off, None, None)
    raise ValueError(f"{DEVICE_VARIABLE}={device!r} is not a device these checks run on: use cuda or cpu")


SCALE = scale_for(os.environ.get(DEVICE_VARIABLE, "cuda"))
gpu = pytest.mark.gpu
needs_device = pytest.mark.skipif(
    SCALE.device == "cuda" and not torch.cuda.is_available(),
    reason=f"needs a CUDA GPU ({DEVICE_VARIABLE}=cpu runs these at tiny sizes on the CPU)",
)
COMPARES_RANKS = SCALE.device == "cpu" or SCALE.ddp_devices >= 2  # on the CPU: the code path, one process
FP32_EXACT = {"NVIDIA_TF32_OVERRIDE": "0"}  # cuBLAS and cuDNN in full fp32, for the processes of (e)


@contextmanager
def fp32_exact() -> Iterator[None]:
    """cuDNN convolutions and matrix products in full fp32 (no TF32) inside the block, as the CPU computes."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


# The entry points and interfaces the checks go through, each named once.


def write_synthetic_mura(folder: Path, studies_per_part: int) -> Path:
    """The check's synthetic MURA (CHECK_DATA) in `folder`; returns its MURA-v1.1 folder."""
    finished = run_module(
        "mura_lightning.synthetic", f"root={folder}", f"studies_per_part={studies_per_part}", *CHECK_DATA
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return folder / "MURA-v1.1"


def train_run(overrides: list[str]) -> dict:
    """Train in this process; the flat results (results.json). Lightning turns Ctrl-C (gpu_check.sh's SIGINT at
    the stage's limit) into exit(1): it becomes a KeyboardInterrupt again, so pytest stops and writes its JUnit."""
    from mura_lightning.train import train

    try:
        return train(compose("train", overrides))
    except SystemExit as stopped:
        raise KeyboardInterrupt(f"training stopped (exit {stopped.code})") from stopped


def augment_batch(images: torch.Tensor, seed: int) -> torch.Tensor:
    """The training batch augmentation (flips and rotations, as data.gpu_augment runs it) of a uint8 batch on
    its device, with the random draws of `seed`."""
    from mura_lightning.data.presets import BatchAugment

    augment = BatchAugment(hflip_prob=0.5, rotation_degrees=30.0)
    return augment(images, torch.Generator().manual_seed(seed))


def load_model(checkpoint: str) -> torch.nn.Module:
    """The MURAClassifier of a checkpoint, in eval mode on the CPU."""
    from mura_lightning.inference.checkpoints import load_classifier

    return load_classifier(checkpoint).eval()


def abnormal_inputs(mura: Path, model: torch.nn.Module, size: int, count: int) -> torch.Tensor:
    """The first `count` radiographs of abnormal test studies, as `model` takes them at `size` px."""
    from mura_lightning.data.images import read_grayscale
    from mura_lightning.data.presets import normalize, resize

    paths = sorted(mura.glob("valid/*/*/*_positive/*.png"))[:count]
    return torch.stack([normalize(resize(read_grayscale(path), size), model.preprocessing) for path in paths])


def class_activation_maps(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) as the CAM callback computes them."""
    from mura_lightning.inference.explain import compute_cams

    return torch.from_numpy(compute_cams(model.net, model.cam_target_layer(), inputs, "GradCAM"))


def cli_arguments(tool: str, device: str, checkpoint: str, root: Path, folder: Path) -> list[str]:
    """`python -m` arguments of `evaluate` or `predict` on `device`, writing into `folder`."""
    if tool == "evaluate":
        paths = [f"paths.root_dir={folder.parent}", f"paths.output_dir={folder}"]
        return ["mura_lightning.evaluate", f"ckpt_path={checkpoint}", f"data.root={root}", *paths,
                "data.num_workers=0", f"device={device}"]  # fmt: skip
    csv = root / "valid_image_paths.csv"
    return ["mura_lightning.predict", f"ckpt_path={checkpoint}", f"input={csv}", f"output={folder}",
            f"device={device}", "num_workers=0"]  # fmt: skip


def cli_probabilities(tool: str, folder: Path) -> pd.Series:
    """Image probabilities (indexed by body part/patient/study/image) that `evaluate` or `predict` wrote."""
    if tool == "evaluate":
        table = read_predictions(folder, "image")
    else:
        table = pd.read_csv(folder / "predictions.csv")
        table = table[table["level"] == "image"]
    keys = table["path"].map(lambda path: "/".join(Path(path).parts[-4:]))
    return table.set_index(keys)["prob"].sort_index()


# Fixtures: one synthetic MURA and the two training runs, shared by every check.


@pytest.fixture(scope="session")
def mura(tmp_path_factory) -> Path:
    if os.environ.get(DATA_VARIABLE):
        return Path(os.environ[DATA_VARIABLE]) / "MURA-v1.1"
    return write_synthetic_mura(tmp_path_factory.mktemp("gpu_data"), SCALE.studies_per_part)


@pytest.fixture(scope="session")
def outputs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpu_runs")


def run_overrides(root: Path, out: Path, name: str, image_size: int = SCALE.image_size) -> list[str]:
    """The training config of the checks: the real GPU path (cache, device augmentation) at SCALE's sizes."""
    return [
        f"data.root={root}",
        f"paths.root_dir={out}",
        f"paths.output_dir={out}/{name}",
        f"model={SCALE.backbone}",
        "model.backbone.pretrained=false",
        f"model.preprocessing.image_size={image_size}",
        f"data.batch_size={SCALE.batch_size}",
        f"data.num_workers={SCALE.num_workers}",
        f"data.persistent_workers={SCALE.num_workers > 0}",
        "data.cache=true",
        f"data.cache_dir={out}/cache",
        "data.gpu_augment=true",
        "optimizer.lr=1e-3",
        f"trainer={'gpu' if SCALE.device == 'cuda' else 'cpu'}",
        f"trainer.max_epochs={SCALE.max_epochs}",
        f"trainer.limit_train_batches={SCALE.limit_batches}",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        *SCALE.callbacks,
    ]


@pytest.fixture(scope="session")
def runs(mura, outputs) -> dict[str, dict]:
    """An fp32 run and a bf16-mixed + channels_last (+ compile) run of the same seed and data."""
    fast = ["trainer.precision=bf16-mixed", "model.channels_last=true", f"model.compile={SCALE.compile}"]
    return {
        "fp32": train_run([*run_overrides(mura, outputs, "fp32"), "trainer.precision=32-true"]),
        "bf16": train_run([*run_overrides(mura, outputs, "bf16"), *fast]),
    }


@gpu
@needs_device
def test_a_bf16_channels_last_compiled_run_learns_like_fp32(runs):
    for name, results in runs.items():
        for key in COMPARED_METRICS:
            assert 0.0 <= results[key] <= 1.0, f"{name}: {key}={results[key]}"
            if SCALE.min_auroc is not None:
                assert results[key] >= SCALE.min_auroc, f"the {name} run did not learn: {key}={results[key]:.3f}"
    if SCALE.auroc_tolerance is not None:
        for key in COMPARED_METRICS:
            assert runs["bf16"][key] == pytest.approx(runs["fp32"][key], abs=SCALE.auroc_tolerance), key


@gpu
@needs_device
def test_b_batch_augmentation_on_the_device_equals_the_cpu():
    size = SCALE.image_size
    coarse = torch.rand(2 * SCALE.batch_size, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    images = (F.interpolate(coarse, size=(size, size), mode="bilinear") * 255).round().to(torch.uint8)
    reference = augment_batch(images, seed=7)
    on_device = augment_batch(images.to(SCALE.device), seed=7).cpu()
    assert not torch.equal(reference, images), "the augmentation left the batch as it was"
    difference = (on_device.int() - reference.int()).abs()
    assert difference.max() <= AUGMENT_MAX_LEVELS
    assert (difference > 0).float().mean() <= AUGMENT_MAX_SHARE


@pytest.fixture(scope="session")
def processes(runs, mura, outputs) -> dict[str, Path]:
    """Output folders of the runs that need processes of their own, all started at once (the DDP test of the
    fp32 checkpoint; evaluate and predict on the device and the CPU), so they take the time of the slowest."""
    checkpoint = runs["fp32"]["ckpt_path"]
    overrides = [o for o in run_overrides(mura, outputs, "ddp") if not o.startswith("trainer=")]
    jobs = {}
    if COMPARES_RANKS:
        jobs["ddp"] = ["mura_lightning.train", *overrides, "train=false", f"ckpt_path={checkpoint}",
                       f"trainer={SCALE.ddp_trainer}", f"trainer.devices={SCALE.ddp_devices}",
                       "trainer.precision=32-true"]  # fmt: skip
    for tool in ("evaluate", "predict"):
        for device in {SCALE.device, "cpu"}:
            jobs[f"{tool}_{device}"] = cli_arguments(tool, device, checkpoint, mura, outputs / f"{tool}_{device}")
    environment = {**os.environ, **FP32_EXACT}
    with ThreadPoolExecutor(len(jobs)) as pool:
        started = pool.map(lambda arguments: run_module(*arguments, env=environment), jobs.values())
        finished = dict(zip(jobs, started, strict=True))
    for name, process in finished.items():
        assert process.returncode == 0, f"{name}: {process.stderr[-3000:]}"
    return {name: outputs / name for name in jobs}


@gpu
@needs_device
@pytest.mark.skipif(not COMPARES_RANKS, reason=f"needs 2 GPUs or more, {SCALE.ddp_devices} here: one rank is no test")
def test_c_ddp_over_the_devices_equals_one_process(runs, processes):
    distributed = json.loads((processes["ddp"] / "results.json").read_text())
    compared = [key for key in runs["fp32"] if key.startswith("test/") and "loss" not in key and "/cam/" not in key]
    assert "test/study/kappa" in compared
    for key in compared:
        assert distributed[key] == pytest.approx(runs["fp32"][key], abs=DDP_TOLERANCE, nan_ok=True), key


@gpu
@needs_device
def test_d_cams_of_the_bf16_channels_last_run_on_the_device_equal_the_cpu(runs, mura):
    """The maps of the model trained under bf16 + channels_last (explain.py computes CAMs in fp32, the layout
    kept) on abnormal radiographs, on the device and on the CPU. A model that learned draws maps that are not flat
    (on the CPU's one-batch run they may be)."""
    model = load_model(runs["bf16"]["ckpt_path"])
    assert model.channels_last
    inputs = abnormal_inputs(mura, model, max(SCALE.image_size, CAM_MIN_SIZE), count=4)
    reference = class_activation_maps(model, inputs)
    with fp32_exact():
        on_device = class_activation_maps(model.to(SCALE.device), inputs)
    if SCALE.min_auroc is not None:
        assert (reference.amax(dim=(1, 2)) - reference.amin(dim=(1, 2))).max() > 0.1, "the maps are flat"
    torch.testing.assert_close(on_device, reference, atol=CAM_TOLERANCE, rtol=0)


@gpu
@needs_device
@pytest.mark.parametrize("tool", ["evaluate", "predict"])
def test_e_device_probabilities_equal_the_cpu(tool, processes):
    on_device = cli_probabilities(tool, processes[f"{tool}_{SCALE.device}"])
    on_cpu = cli_probabilities(tool, processes[f"{tool}_cpu"])
    assert len(on_device) == len(on_cpu) > 0
    pd.testing.assert_index_equal(on_device.index, on_cpu.index)
    assert (on_device - on_cpu).abs().max() <= PROBABILITY_TOLERANCE
    other_tool = "predict" if tool == "evaluate" else "evaluate"
    other = cli_probabilities(other_tool, processes[f"{other_tool}_{SCALE.device}"])
    assert (on_device - other.loc[on_device.index]).abs().max() <= PROBABILITY_TOLERANCE, "evaluate != predict"


@gpu
@needs_device
@pytest.mark.skipif(SCALE.paper_epochs is None, reason="a 320 px run from scratch needs a GPU (RESULTS.md: rehearsal)")
def test_f_the_papers_image_size_learns_from_scratch(mura, outputs):
    overrides = [o for o in run_overrides(mura, outputs, "paper_size", PAPER_SIZE) if "max_epochs" not in o]
    results = train_run([*overrides, f"trainer.max_epochs={SCALE.paper_epochs}", "trainer.precision=32-true",
                         "model.channels_last=true"])  # fmt: skip
    auroc = results["test/study/auroc"]
    assert auroc >= PAPER_MIN_AUROC, f"{PAPER_SIZE} px did not learn in {SCALE.paper_epochs} epochs: {auroc:.3f}"


def test_an_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="MURA_GPU_TEST_DEVICE='tpu' is not a device these checks run on"):
        scale_for("tpu")
