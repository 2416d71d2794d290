"""The console scripts of pyproject.toml (`mura-train`, `mura-evaluate`, ...): each is the `main` that
`python -m mura_lightning.X` runs, so each takes the same Hydra overrides and fails the same way."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from helpers.runs import REPO_ROOT

SCRIPTS: dict[str, str] = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
MAIN_BLOCK = 'if __name__ == "__main__":\n    main()'
NOT_HYDRA = {"mura-summarize"}  # argparse: a sweep folder and options
CALLED = ("mura-train", "mura-report", "mura-summarize")  # a hydra_app, one rewriting its command line, argparse


def entry_point_modules() -> set[str]:
    """Every module of the package that runs as `python -m`: a `__main__` block, or a package's __main__.py."""
    package = REPO_ROOT / "mura_lightning"
    modules = set()
    for path in package.rglob("*.py"):
        if path.name == "__main__.py" or MAIN_BLOCK in path.read_text():
            modules.add(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts))
    return modules


def test_every_entry_point_has_a_console_script_named_after_it():
    targets = {target.split(":")[0]: script for script, target in SCRIPTS.items()}
    assert set(targets) == entry_point_modules()
    for module, script in targets.items():
        assert script == "mura-" + module.removesuffix(".__main__").rsplit(".", 1)[-1]


@pytest.mark.parametrize(("script", "target"), sorted(SCRIPTS.items()))
def test_each_script_is_the_main_python_m_runs(script, target):
    module_name, function = target.split(":")
    assert function == "main"
    assert MAIN_BLOCK in Path(importlib.util.find_spec(module_name).origin).read_text()
    assert callable(importlib.import_module(module_name).main)


CALL_EACH_SCRIPT = """
import contextlib, importlib, io, json, sys
codes = {}
for script, target, args in json.loads(sys.argv[1]):
    module, function = target.split(":")
    sys.argv = [script, *args]   # as the wrapper pip writes into bin/ calls it
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            getattr(importlib.import_module(module), function)()
            code = 0
        except SystemExit as exit:
            code = exit.code
    codes[script] = [code, err.getvalue().strip().splitlines()[-1:]]
print(json.dumps(codes))
"""


def test_the_scripts_take_the_overrides_and_refuse_a_misspelt_one_in_one_line(tmp_path):
    """What a script does with a command line, called as the wrapper pip writes into bin/ calls it (one process
    for all; each kind of `main` once: the others are the same function, above)."""
    calls = [
        (script, SCRIPTS[script], ["sweep", "--no-such-option"] if script in NOT_HYDRA else ["traner.max_epochs=1"])
        for script in CALLED
    ]
    finished = subprocess.run(
        [sys.executable, "-c", CALL_EACH_SCRIPT, json.dumps(calls)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    codes = json.loads(finished.stdout.strip().splitlines()[-1])
    for script in CALLED:
        code, last_line = codes[script]
        assert code == 2, (script, last_line)
        expected = "unrecognized arguments: --no-such-option" if script in NOT_HYDRA else "has no key 'traner'"
        assert expected in last_line[0], (script, last_line)
    assert list(tmp_path.iterdir()) == []  # refused before any job started
