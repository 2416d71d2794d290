"""Runs `python -m <module> <args>` commands for tests/test_readme.py, each in a child forked from this process.

This process imports the heavy libraries (torch, torchvision, Lightning, torchmetrics, Hydra, pandas, matplotlib)
once, so a command does not pay their ~6 s import. It imports no entry point module and runs no Hydra app and no
torch computation, so every child starts as a fresh `python -m` would, minus the import time: it changes into
its folder and runs the module as `__main__` with `runpy.run_module(..., alter_sys=True)`, which is what
`python -m` does, so the command's argv goes through the real Hydra main.

Protocol: one JSON request per line on stdin, {"module", "args", "cwd", "log", "timeout_s"}; one JSON reply
per line on stdout, {"returncode"} (negative: killed by that signal, at the timeout). The child's stdout and
stderr go to the file "log".
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import signal
import sys
import time
import traceback

HEAVY_IMPORTS = ("torch", "torchvision", "lightning", "torchmetrics", "hydra", "omegaconf", "pandas", "matplotlib")
POLL_S = 0.05


def exit_code(stop: SystemExit) -> int:
    """The process exit status a SystemExit stands for (as the interpreter maps it)."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def run_child(module: str, args: list[str], cwd: str, log: str) -> None:
    """In the forked child: run the module as `python -m module args` would, from `cwd`, output into `log`;
    never returns."""
    code = 1
    try:
        output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.chdir(cwd)
        sys.argv = [module, *args]  # runpy puts the module's file in argv[0], as python -m does
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = exit_code(stop)
    except BaseException:
        traceback.print_exc()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait(pid: int, timeout_s: float) -> int:
    """The child's exit status; it is killed (status -9) when it runs past timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        time.sleep(POLL_S)


def serve() -> None:
    """Answer requests from stdin until it closes."""
    for module in HEAVY_IMPORTS:
        __import__(module)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_child(request["module"], request["args"], request["cwd"], request["log"])
        print(json.dumps({"returncode": wait(pid, request["timeout_s"])}), flush=True)


if __name__ == "__main__":
    serve()
