"""Progress where stdout is not a terminal: plain log lines from training and from loops outside Lightning."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from helpers.runs import compose, run_module, tiny_run_overrides
from lightning.pytorch.callbacks import RichProgressBar

from mura_lightning import progress as progress_module
from mura_lightning.callbacks.progress import LogProgressBar, _counted, batch_length, progress_bar
from mura_lightning.config import instantiate
from mura_lightning.data.cache import build_cache
from mura_lightning.errors import MuraError
from mura_lightning.progress import PlainProgress, format_duration, progress, track

DURATION = r"\d+:\d\d:\d\d"


def test_training_with_stdout_piped_logs_plain_progress_lines(mura_root, tmp_path):
    quiet = ("callbacks.progress_bar=", "trainer.enable_progress_bar=")
    overrides = [o for o in tiny_run_overrides(mura_root, tmp_path) if not o.startswith(quiet)]
    result = run_module(
        "mura_lightning.train",
        *overrides,
        "trainer.limit_train_batches=5",
        "callbacks.progress_bar.every_n_batches=2",
        "test=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "training: 1 epoch of 5 batches" in output
    batch_lines = re.findall(
        rf"epoch 1/1 batch (\d)/5: loss \d+\.\d{{4}}, \d+\.\d img/s, {DURATION} left in the epoch", output
    )
    assert batch_lines == ["2", "4"]
    epoch_line = rf"epoch 1/1 done in {DURATION}: loss \d+\.\d{{4}}, \d+\.\d img/s, val/loss \d+\.\d{{4}}, "
    assert re.search(epoch_line + r"val/study/kappa -?\d+\.\d{4}; 0:00:00 left in the fit", output), output[-3000:]
    assert re.search(r"validation: \d+ batches, \d+ images in", output)
    (log_file,) = tmp_path.rglob("train.log")
    assert re.search(epoch_line, log_file.read_text()), "the run's log file keeps them too"


def test_the_progress_bar_is_rich_on_a_terminal_plain_otherwise_and_can_be_forced(monkeypatch):
    cfg = compose("train", [])
    assert isinstance(instantiate(cfg.callbacks.progress_bar), LogProgressBar), "pytest's stdout is no terminal"
    assert isinstance(progress_bar(mode="rich"), RichProgressBar)
    monkeypatch.setattr(progress_module, "stdout_is_live", lambda: True)
    assert isinstance(instantiate(cfg.callbacks.progress_bar), RichProgressBar)
    assert isinstance(progress_bar(mode="plain", every_n_batches=7), LogProgressBar)


def test_a_bad_progress_setting_is_a_clear_error():
    with pytest.raises(MuraError, match="progress mode 'fancy' is not one of: auto, rich, plain"):
        progress_bar(mode="fancy")
    with pytest.raises(ValueError, match="every_n_batches=0 must be at least 1"):
        LogProgressBar(every_n_batches=0)


def test_batch_length_finds_the_first_tensor():
    assert batch_length({"study": ["a", "b"], "image": torch.zeros(3, 1, 4, 4)}) == 3
    assert batch_length((torch.zeros(5, 2), torch.zeros(5))) == 5
    assert batch_length(["no tensors"]) == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_logs_at_most_every_interval_and_a_final_line(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="mura_lightning.progress")
    bar = PlainProgress("caching", total=100, unit="images", interval_s=10.0, clock=clock)
    for _ in range(10):
        clock.now += 3.0
        bar.advance(10)
    bar.finish()
    assert caplog.messages == [
        "caching: 40/100 (40%), 3.3 images/s, 0:00:18 left",
        "caching: 80/100 (80%), 3.3 images/s, 0:00:06 left",
        "caching: 100/100 (100%) in 0:00:30 (3.3 images/s)",
    ]


def test_plain_progress_every_n_items_and_unknown_total(caplog):
    caplog.set_level(logging.INFO, logger="mura_lightning.progress")
    clock = FakeClock()
    bar = PlainProgress("reading", every_n=2, interval_s=1e9, clock=clock)
    for _ in range(5):
        clock.now += 1.0
        bar.advance()
    assert caplog.messages == [
        "reading: 2, 1.0 items/s, ? left",
        "reading: 4, 1.0 items/s, ? left",
    ]


def test_track_yields_every_item_and_ends_with_a_line_in_plain_mode(caplog):
    caplog.set_level(logging.INFO, logger="mura_lightning.progress")
    assert list(track(range(7), "predicting", mode="plain", unit="images")) == list(range(7))
    assert len(caplog.messages) == 1
    assert re.fullmatch(rf"predicting: 7/7 \(100%\) in {DURATION} \(.+ images/s\)", caplog.messages[0])


def test_an_interrupted_loop_says_where_it_stopped(caplog):
    caplog.set_level(logging.INFO, logger="mura_lightning.progress")
    with pytest.raises(KeyboardInterrupt), progress("caching", total=10, mode="plain") as bar:
        bar.advance(3)
        raise KeyboardInterrupt
    assert caplog.messages[-1].startswith("caching: stopped at 3/10 (30%) after")


def test_the_rich_mode_shows_a_bar(capsys):
    with progress("caching", total=4, mode="rich") as bar:
        bar.advance(4)
    assert "caching" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00:00"), (61.4, "0:01:01"), (3725, "1:02:05"), (float("inf"), "?")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_the_image_cache_build_logs_plain_progress(mura_root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mura_lightning.progress")
    paths = sorted(str(path) for path in mura_root.rglob("*.png"))
    build_cache(paths, 32, tmp_path / "cache", num_workers=1)
    assert re.fullmatch(
        rf"caching {len(paths)} images at 32 px: {len(paths)}/{len(paths)} \(100%\) in {DURATION} \(.+ images/s\)",
        caplog.messages[-1],
    )


def test_the_fit_line_counts_in_english():
    counts = [_counted(1, "epoch", "epochs"), _counted(6, "epoch", "epochs"), _counted(45, "batch", "batches")]
    assert counts == ["1 epoch", "6 epochs", "45 batches"]
