"""`make demo`'s first screen: before its first epoch, what matters (the data found, the model, the device and
precision) and no warning or tip but those about the user's own settings."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

from helpers.runs import REPO_ROOT

FIRST_EPOCH = "training: 1 epoch of 1 batch"  # the plain progress bar's line as the fit starts
WARNING_LINE = re.compile(r"\.py:\d+: ")  # Python's warnings: the file and line, then the message
NOISE = re.compile(r"warn|tip:|flops|srun|deprecat|was configured so 100%", re.IGNORECASE)
USER_SETTING = "The number of training batches (1) is smaller than the logging interval Trainer(log_every_n_steps=10)"
TIMEOUT_S = 600


def first_screen(*overrides: str, cwd) -> list[str]:
    """The lines `python -m mura_lightning.train overrides` prints (stdout and stderr) before its first epoch;
    the run is stopped there."""
    command = [sys.executable, "-m", "mura_lightning.train", *overrides]
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd) as run:
        watchdog = threading.Timer(TIMEOUT_S, run.kill)
        watchdog.start()
        for line in run.stdout:
            if FIRST_EPOCH in line:
                break
            lines.append(line.rstrip("\n"))
        else:
            raise AssertionError("the run ended before its first epoch:\n" + "\n".join(lines[-40:]))
        watchdog.cancel()
        run.kill()
    return lines


def test_the_demo_says_what_matters_and_warns_only_about_the_users_settings(tmp_path):
    """`make demo` in a tiny form: its synthetic tree (4 studies per part), 32 px, one batch, bfloat16 as on the
    demo; one batch an epoch is fewer than log_every_n_steps, which Lightning rightly warns about."""
    lines = first_screen(
        "experiment=demo",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path}/run",
        "data.synthetic.studies_per_part=4",
        "model.preprocessing.image_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        cwd=REPO_ROOT,
    )
    screen = "\n".join(lines)
    for what_matters in ("synthetic MURA: 28 studies", "train 32 images", "DenseNet", "Total params", "GPU available"):
        assert what_matters in screen, screen
    assert "Using bfloat16 Automatic Mixed Precision" in screen
    warnings = [line for line in lines if WARNING_LINE.search(line) or NOISE.search(line)]
    assert len(warnings) == 1 and USER_SETTING in warnings[0], "\n".join(warnings)
