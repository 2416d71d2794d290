"""Servers the tests start as real processes (the model service, an MLflow tracking server, a static file
server for the browser): a free loopback port, and waiting until one answers."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

LOG_TAIL_CHARS = 3000


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_answering(url: str, server: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll `url` until it answers 200, at most `timeout_s` seconds and not after `server` ended; an AssertionError
    with the end of the server's `log` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(
                f"{server.args[:3]} exited with {server.returncode}: {log.read_text()[-LOG_TAIL_CHARS:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout_s} s: {log.read_text()[-LOG_TAIL_CHARS:]}")
