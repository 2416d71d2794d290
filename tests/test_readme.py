"""The README's commands, run as written.

Every `python -m mura_lightning...` line in a fenced ```bash block of README.md runs, in README order, from one
fresh temporary folder, and must exit with 0. Each is made tiny by appending size and speed overrides only
(TINY: a small synthetic data.root, 32 px, one epoch of one batch, two folds, one trial; never
hydra.sweep.dir, hydra.run.dir or paths.*), and its placeholders (`<run>`, `FILE`, `a.ckpt`, ...) are filled with
what earlier README commands wrote in that folder (PLACEHOLDERS). A command whose comment says `needs: ...` is
skipped for a reason listed in NEEDS. A command added to the README later is run the same way; one with a
placeholder, a module, a wrapper or a need this file does not know fails here, saying what to add.

Speed: torch and Lightning take ~6 s to import, and the README holds ~30 commands. So each command runs in a
child forked from one process that imported them once (tests/helpers/readme_runner.py), through
`runpy.run_module(module, run_name="__main__", alter_sys=True)`: what `python -m` does, the user's argv through
the real Hydra main. The commands in SUBPROCESS (the headline sweep) run as real `python -m` subprocesses.
Every command runs with one torch thread (COMMAND_ENV): 32 px batches gain nothing from a second, and on a busy
machine two threads per command spun against each other (881 s of CPU for this test, against 157 s with one).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers.runs import REPO_ROOT

README = REPO_ROOT / "README.md"
RUNNER = Path(__file__).parent / "helpers" / "readme_runner.py"
PACKAGE = "mura_lightning"
COMMAND_TIMEOUT_S = 1800  # a guard against a hung command only
TREE_STUDIES_PER_PART = 12  # the smallest synthetic MURA whose every body part splits into 2 folds by patient
TREE_SEED = 0
LOG_TAIL_LINES = 25
COMMAND_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # read by torch when imported: set before the runner starts

# What a README command may need that the test machine lacks; a command says so in its comment: `# ... needs: X`.
NEEDS = {
    "GPUs": "the test machine has none (benchmarks/gpu_check.sh and `pytest -m gpu` run on a GPU loan)",
    "SLURM": "only tests/test_slurm.py and tests/test_slurm_multinode.py submit to the test cluster (tests/slurm/)",
    "real MURA": "the dataset is a download from Stanford, not on the test machine",
    "ImageNet weights": "torchvision's pretrained weights are a download; the test machine has no network",
    "a server loop": "the service answers until stopped; tests/test_serve.py runs it as a real process on a free port",
}

# Wrappers a README command may be prefixed with, and why running it without them is the same command.
WRAPPERS = {"/usr/bin/time": "only measures the command's time"}

# Commands run as real `python -m` subprocesses (their README text starts so), not forked from the runner.
HEADLINE_SWEEP = "python -m mura_lightning.train -m model=densenet169,resnet50 bodypart=shoulder,wrist"
ONE_BODY_PART = "python -m mura_lightning.train model=densenet169 bodypart=shoulder"
SUBPROCESS = (HEADLINE_SWEEP,)


@dataclass(frozen=True)
class ReadmeCommand:
    """One command of a README bash block: where it is, its text, its module and arguments, what it needs."""

    line: int
    text: str
    wrapper: tuple[str, ...]
    module: str
    args: tuple[str, ...]
    needs: tuple[str, ...]


def logical_lines(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The lines of a bash block with `\\` continuations joined, each with the number of its first line."""
    joined: list[tuple[int, str]] = []
    start, parts = None, []
    for number, text in block:
        start = number if start is None else start
        if text.rstrip().endswith("\\"):
            parts.append(text.rstrip()[:-1])
            continue
        joined.append((start, " ".join([*parts, text]).strip()))
        start, parts = None, []
    return joined


def parse_command(line: int, text: str) -> ReadmeCommand:
    """A README line running `python -m mura_lightning...` as a ReadmeCommand."""
    code, _, comment = text.partition(" # ")
    words = shlex.split(code)
    start = next(i for i in range(len(words) - 1) if words[i] == "python" and words[i + 1] == "-m")
    needs = re.search(r"needs:\s*(.+?)\)?\s*$", comment)
    return ReadmeCommand(
        line=line,
        text=text,
        wrapper=tuple(words[:start]),
        module=words[start + 2],
        args=tuple(words[start + 3 :]),
        needs=tuple(need.strip() for need in needs.group(1).split(",")) if needs else (),
    )


def readme_commands(text: str) -> list[ReadmeCommand]:
    """The `python -m mura_lightning...` commands of the README's fenced bash blocks, in order."""
    commands, block, in_bash = [], [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            if in_bash:
                commands.extend(
                    parse_command(start, joined)
                    for start, joined in logical_lines(block)
                    if f"python -m {PACKAGE}" in joined
                )
            in_bash, block = line.strip() == "```bash", []
        elif in_bash:
            block.append((number, line))
    return commands


@dataclass
class Workspace:
    """The fresh folder the commands run in, the tiny tree they train on, and the folders each command made."""

    root: Path
    tree: Path
    made: list[tuple[ReadmeCommand, list[Path]]] = field(default_factory=list)

    def folders(self) -> set[Path]:
        """Run folders so far: outputs/<task>/<run> and outputs/<folder>."""
        outputs = self.root / "outputs"
        return {path for path in [*outputs.glob("*"), *outputs.glob("*/*")] if path.is_dir()}

    def newest(self, parent: str) -> Path:
        """The folder under `parent` (relative to the workspace) that the latest command to make one made."""
        for _, folders in reversed(self.made):
            inside = [folder for folder in folders if folder.parent == self.root / parent]
            if inside:
                return inside[-1]
        raise LookupError(f"no earlier README command made a folder in {parent}/")

    def made_by(self, fragment: str, parent: str) -> Path:
        """The folder under `parent` made by the README command whose text contains `fragment`."""
        for command, folders in self.made:
            inside = [folder for folder in folders if folder.parent == self.root / parent]
            if fragment in command.text and inside:
                return inside[-1]
        raise LookupError(f"no earlier README command containing {fragment!r} made a folder in {parent}/")

    def relative(self, path: Path) -> str:
        """`path` as the README writes paths: relative to the folder the commands run in."""
        return str(path.relative_to(self.root))

    def best_checkpoint(self, run: Path) -> str:
        """The best checkpoint of a run folder, relative to the workspace."""
        (best,) = sorted((run / "checkpoints").glob("best*.ckpt"))
        return self.relative(best)


Fill = Callable[[Workspace, re.Match], str]


@dataclass(frozen=True)
class Placeholder:
    """A placeholder of README commands: the pattern it is written as, what it stands for, how to fill it."""

    pattern: str
    means: str
    fill: Fill


def word(name: str) -> str:
    """A pattern matching `name` alone, not inside a longer name or path."""
    return rf"(?<![\w/.<-]){re.escape(name)}(?![\w/.>-])"


def folder_name(parent: str) -> Fill:
    """The name of the newest folder in `parent`."""
    return lambda ws, _: ws.newest(parent).name


def newest_folder(parent: str) -> Fill:
    """The newest folder in `parent`, relative to the workspace."""
    return lambda ws, _: ws.relative(ws.newest(parent))


def output_of(fragment: str, parent: str) -> Fill:
    """The folder in `parent` made by the README command containing `fragment`, relative to the workspace."""
    return lambda ws, _: ws.relative(ws.made_by(fragment, parent))


def headline_shoulder_checkpoint(number: int) -> Fill:
    """The best checkpoint of the README's headline sweep's shoulder job `number` (0: DenseNet-169, 1: ResNet-50):
    an ensemble's members must be trained on the same body parts."""

    def fill(ws: Workspace, _: re.Match) -> str:
        sweep = ws.made_by(HEADLINE_SWEEP, "outputs/multirun")
        jobs = sorted(path for path in sweep.iterdir() if path.is_dir() and "bodypart-shoulder" in path.name)
        return ws.best_checkpoint(jobs[number])

    return fill


def one_body_part_checkpoint(ws: Workspace, _: re.Match) -> str:
    return ws.best_checkpoint(ws.made_by(ONE_BODY_PART, "outputs/train"))


def train_run_checkpoint(ws: Workspace, _: re.Match) -> str:
    return ws.best_checkpoint(ws.newest("outputs/train"))


ENSEMBLE_EVALUATION = "python -m mura_lightning.evaluate 'ckpt_path=[a.ckpt,b.ckpt,c.ckpt]'"
DENSENET_CHECKPOINT = "outputs/train/<run>/checkpoints/best-epoch007.ckpt"
DENSENET_EVALUATION = f"python -m mura_lightning.evaluate ckpt_path={DENSENET_CHECKPOINT}"
RESNET_EVALUATION = "python -m mura_lightning.evaluate ckpt_path=FILE tta=hflip"
SAME_STUDIES = "(the shoulder models' ensemble, tested on the shoulder studies as the other compared folders)"

# Filled in this order (a later pattern sees what an earlier one filled in).
PLACEHOLDERS = (
    Placeholder(
        re.escape("outputs/evaluate/<date>_<time>"), "the newest evaluate output", newest_folder("outputs/evaluate")
    ),
    Placeholder(
        re.escape("outputs/compare/<date>_<time>"), "the newest compare output", newest_folder("outputs/compare")
    ),
    Placeholder("<date>_<time>", "the newest sweep folder in outputs/multirun/", folder_name("outputs/multirun")),
    Placeholder(re.escape(DENSENET_CHECKPOINT), f"the best checkpoint of `{ONE_BODY_PART}`", one_body_part_checkpoint),
    Placeholder("<run>", "the newest training run folder in outputs/train/", folder_name("outputs/train")),
    Placeholder(
        "outputs/evaluate/<densenet>",
        f"the output of `{DENSENET_EVALUATION}...`",
        output_of(DENSENET_EVALUATION, "outputs/evaluate"),
    ),
    Placeholder(
        "outputs/evaluate/<resnet>",
        f"the output of `{RESNET_EVALUATION}`",
        output_of(RESNET_EVALUATION, "outputs/evaluate"),
    ),
    Placeholder(
        word("A"),
        f"the output of `{ENSEMBLE_EVALUATION}` {SAME_STUDIES}",
        output_of(ENSEMBLE_EVALUATION, "outputs/evaluate"),
    ),
    Placeholder(
        word("B"), f"the output of `{DENSENET_EVALUATION}...`", output_of(DENSENET_EVALUATION, "outputs/evaluate")
    ),
    Placeholder(word("C"), f"the output of `{RESNET_EVALUATION}`", output_of(RESNET_EVALUATION, "outputs/evaluate")),
    Placeholder(word("run/checkpoints/best-epoch007.ckpt"), "the train run's best checkpoint", train_run_checkpoint),
    Placeholder(
        r"(?P<run>[\w./-]+)/checkpoints/best-epoch\d{3}\.ckpt",
        "that run's best checkpoint",
        lambda ws, match: ws.best_checkpoint(ws.root / match["run"]),
    ),
    Placeholder(word("FILE"), f"the best checkpoint of `{ONE_BODY_PART}`", one_body_part_checkpoint),
    Placeholder(
        word("a.ckpt"),
        "the best checkpoint of the headline sweep's DenseNet-169 shoulder job",
        headline_shoulder_checkpoint(0),
    ),
    Placeholder(word("b.ckpt"), "the best checkpoint of its ResNet-50 shoulder job", headline_shoulder_checkpoint(1)),
    Placeholder(word("c.ckpt"), f"the best checkpoint of `{ONE_BODY_PART}`", one_body_part_checkpoint),
    Placeholder(
        word("PATH"),
        "a study folder of the tiny tree's valid split",
        lambda ws, _: str(sorted((ws.tree / "valid" / "XR_SHOULDER").glob("patient*/study*"))[0]),
    ),
    Placeholder(word("DIR"), "a new output folder", lambda ws, _: f"outputs/readme_dir_{len(ws.made)}"),
)

# What still looks like a placeholder once PLACEHOLDERS are filled: <...>, an all-capitals word, an ellipsis.
UNFILLED = re.compile(r"<[^<>\s]*>|(?<![\w/.-])[A-Z][A-Z0-9_]*(?![\w/.-])|\.\.\.")

# Size and speed overrides appended to each module's commands: (when the command's text matches, overrides).
ALWAYS = ""
SYNTHETIC = r"experiment=\S*\bdemo\b|data=synthetic"
CROSS_VALIDATION = r"experiment=\S*\bcv\b"
NOT_A_RESUME = r"^(?!.*\bckpt_path=)"
TRAINING = [
    (ALWAYS, ["model.preprocessing.image_size=32", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0"]),
    (ALWAYS, ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]),
    (ALWAYS, ["callbacks.cam.every_n_epochs=2", "callbacks.metrics_report.every_n_epochs=2"]),  # not in the fit
    (ALWAYS, ["data.num_workers=0", "data.persistent_workers=false", "metrics.bootstrap.samples=100"]),
    (ALWAYS, ["callbacks.cam.num_images=2", "callbacks.cam.localisation_images=2"]),
    (ALWAYS, ["data.root={tree}"]),
    # ~30 runs of a 150 MB DenseNet-169 checkpoint pair filled 8 GB: no last.ckpt, and a best one of weights only
    (NOT_A_RESUME, ["callbacks.last_checkpoint=null", "+callbacks.model_checkpoint.save_weights_only=true"]),
    (SYNTHETIC, [f"data.synthetic.studies_per_part={TREE_STUDIES_PER_PART}", f"data.synthetic.seed={TREE_SEED}"]),
    (CROSS_VALIDATION, ["data.num_folds=2"]),
]
TINY = {
    "mura_lightning.train": TRAINING,
    "mura_lightning.tune": [*TRAINING, (ALWAYS, ["hparams_search.n_trials=1"])],
    "mura_lightning.evaluate": [(ALWAYS, ["data.num_workers=0", "metrics.bootstrap.samples=100"])],
    "mura_lightning.predict": [(ALWAYS, ["num_workers=0"])],
    "mura_lightning.compare": [(ALWAYS, ["metrics.bootstrap.samples=100"])],
    "mura_lightning.summarize": [(ALWAYS, ["--bootstrap-samples", "100"])],
    "mura_lightning.export": [],
    "mura_lightning.report": [(ALWAYS, ["reporting.gallery.max_views=2"])],
}
FORBIDDEN_TINY = ("hydra.sweep.dir", "hydra.run.dir", "paths.")


def problems(command: ReadmeCommand) -> list[str]:
    """What this file does not know to run the command: its wrapper, module, needs or placeholders."""
    where = f"README.md line {command.line} ({command.text})"
    found = [f"{where}: the wrapper {name!r} is not in WRAPPERS" for name in command.wrapper if name not in WRAPPERS]
    found += [
        f"{where}: needs {need!r}, which is not in NEEDS: say why the test cannot"
        for need in command.needs
        if need not in NEEDS
    ]
    if command.needs:
        return found
    if command.module not in TINY:
        found.append(f"{where}: add {command.module}'s size and speed overrides to TINY (an empty list if none)")
    for arg in command.args:
        for placeholder in PLACEHOLDERS:
            arg = re.sub(placeholder.pattern, "x", arg)
        found += [
            f"{where}: {unfilled!r} looks like a placeholder: add it to PLACEHOLDERS (which earlier README "
            "command's output it stands for), or mark the command `# needs: ...`"
            for unfilled in UNFILLED.findall(arg)
        ]
    return found


def fill(arg: str, ws: Workspace) -> str:
    """An argument with its placeholders filled from the workspace; LookupError says which cannot be."""
    for placeholder in PLACEHOLDERS:
        try:
            arg = re.sub(placeholder.pattern, lambda match, p=placeholder: p.fill(ws, match), arg)
        except LookupError as err:
            raise LookupError(f"{placeholder.pattern} stands for {placeholder.means}, but {err}") from err
    return arg


def tiny_overrides(command: ReadmeCommand, ws: Workspace) -> list[str]:
    """The size and speed overrides appended to the command."""
    appended = []
    for when, overrides in TINY[command.module]:
        if re.search(when, command.text):
            appended += [override.format(tree=ws.tree) for override in overrides]
    return appended


class Runner:
    """tests/helpers/readme_runner.py in a subprocess: runs commands in children forked from it."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(RUNNER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env=COMMAND_ENV,
        )
        assert json.loads(self.process.stdout.readline())["ready"]

    def run(self, module: str, args: list[str], cwd: Path, log: Path) -> int:
        request = {"module": module, "args": args, "cwd": str(cwd), "log": str(log), "timeout_s": COMMAND_TIMEOUT_S}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["returncode"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def run_as_subprocess(module: str, args: list[str], cwd: Path, log: Path) -> int:
    """`python -m module args` in a subprocess, its output into `log`; its exit status (-9: past the timeout)."""
    command = [sys.executable, "-m", module, *args]
    with log.open("w") as output:
        try:
            finished = subprocess.run(
                command, cwd=cwd, env=COMMAND_ENV, stdout=output, stderr=subprocess.STDOUT, timeout=COMMAND_TIMEOUT_S
            )
            return finished.returncode
        except subprocess.TimeoutExpired:
            return -9


def run_readme(commands: list[ReadmeCommand], ws: Workspace) -> list[str]:
    """Run the commands in order in the workspace; a report of each that failed (with its log's end)."""
    failures = []
    logs = ws.root.parent / "logs"
    logs.mkdir(exist_ok=True)
    runner = Runner()
    try:
        for number, command in enumerate(commands):
            if command.needs:
                continue
            before = ws.folders()
            try:
                args = [fill(arg, ws) for arg in command.args] + tiny_overrides(command, ws)
            except LookupError as err:
                failures.append(f"README.md line {command.line} ({command.text}): {err}")
                continue
            log = logs / f"{number:02d}_{command.module.rsplit('.', 1)[-1]}.log"
            run = run_as_subprocess if command.text.startswith(SUBPROCESS) else runner.run
            returncode = run(command.module, args, ws.root, log)
            ws.made.append((command, sorted(ws.folders() - before, key=lambda path: path.stat().st_mtime)))
            if returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
                failures.append(
                    f"README.md line {command.line} exited with {returncode}:\n  {command.text}\n  ran as: "
                    f"python -m {command.module} {shlex.join(args)}\n  in {ws.root}; its output ends:\n{tail}"
                )
    finally:
        runner.close()
    return failures


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory) -> Path:
    """A small synthetic MURA (all seven body parts) for every README command to train on."""
    from mura_lightning.synthetic.write import generate_synthetic_mura

    parent = tmp_path_factory.mktemp("readme_tree")
    return generate_synthetic_mura(parent, studies_per_part=TREE_STUDIES_PER_PART, seed=TREE_SEED, num_workers=1)


def test_every_readme_command_is_known_to_this_test():
    commands = readme_commands(README.read_text())
    assert len(commands) > 20, "the README's bash blocks were not found"
    assert [problem for command in commands for problem in problems(command)] == []
    assert all(any(c.text.startswith(prefix) for c in commands) for prefix in SUBPROCESS), "a SUBPROCESS command left"
    tiny = [override for rules in TINY.values() for _, overrides in rules for override in overrides]
    assert not [override for override in tiny if override.startswith(FORBIDDEN_TINY)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("python -m mura_lightning.evaluate ckpt_path=outputs/<sweep>/", r"'<sweep>' looks like a placeholder: add it"),
        ("python -m mura_lightning.predict ckpt_path=FILE input=IMAGE", r"'IMAGE' looks like a placeholder: add it"),
        ("python -m mura_lightning.serve port=8000", r"add mura_lightning.serve's size and speed overrides to TINY"),
        ("python -m mura_lightning.train trainer=gpu   # needs: TPU", r"needs 'TPU', which is not in NEEDS"),
        ("nohup python -m mura_lightning.train", r"the wrapper 'nohup' is not in WRAPPERS"),
    ],
)
def test_a_new_readme_command_this_test_cannot_run_says_what_to_add(line, message):
    (command,) = readme_commands(f"text\n```bash\n{line}\n```\n")
    assert re.search(message, "\n".join(problems(command)))


def test_needs_and_continued_lines_are_read_from_the_readme_text():
    text = "```bash\npython -m mura_lightning.train -m a=1 \\\n    b=2   # two jobs; needs: SLURM, GPUs\n```\n"
    (command,) = readme_commands(text)
    assert (command.line, command.module, command.args, command.needs) == (
        2,
        "mura_lightning.train",
        ("-m", "a=1", "b=2"),
        ("SLURM", "GPUs"),
    )


def test_a_placeholder_that_no_earlier_command_wrote_says_what_it_stands_for(tmp_path):
    message = r"<run> stands for the newest training run folder in outputs/train/, but no earlier README command"
    with pytest.raises(LookupError, match=message):
        fill("python -m mura_lightning.report outputs/train/<run>", Workspace(tmp_path, tmp_path))


def test_a_checkpoint_placeholder_names_the_command_that_writes_it(tmp_path):
    message = r"stands for the best checkpoint of `python -m mura_lightning.train model=densenet169 bodypart=shoulder`"
    with pytest.raises(LookupError, match=message):
        fill("ckpt_path=outputs/train/<run>/checkpoints/best-epoch007.ckpt", Workspace(tmp_path, tmp_path))


def test_the_readme_commands_run_as_written_from_a_fresh_folder(tiny_tree, tmp_path):
    workspace = tmp_path / "fresh"
    workspace.mkdir()
    failures = run_readme(readme_commands(README.read_text()), Workspace(workspace, tiny_tree))
    assert not failures, "\n\n".join(failures)
