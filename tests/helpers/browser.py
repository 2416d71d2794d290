"""Headless Chromium for the tests that look at pages as a person does: Debian's `chromium` driven through
Playwright's Python API (no browser download). Where either is missing the test is skipped with the reason, except
under CI (`CI=true`), where a missing browser fails the test: CI installs it (.ci/run)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from helpers.servers import free_port

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_FLAGS = [  # no network beyond what the page asks for, no first-run or update traffic, no GPU
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 60


def missing(reason: str) -> NoReturn:
    """Skip the test for `reason`, or fail it under CI, where the browser must be there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: .ci/run installs it)")
    pytest.skip(reason)


def chromium_executable() -> str:
    """The path of the system's Chromium."""
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    missing("no chromium on PATH: apt-get install -y chromium")


@dataclass
class PageLog:
    """What a page did while it was open: console messages by type, uncaught errors, and every request's URL."""

    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def console_errors(self) -> list[str]:
        """The console messages of type error."""
        return [text for kind, text in self.console if kind == "error"]


@contextmanager
def browser_page(tmp_path: Path, width: int = 1200, height: int = 900) -> Iterator[tuple[object, PageLog]]:
    """A Playwright page of headless Chromium (a fresh, empty profile under `tmp_path`) and its log."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed: pip install playwright (the dev extra has it)")
    executable = chromium_executable()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=executable,
            args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height},
        )
        try:
            page = context.new_page()
            log = PageLog()
            page.on("console", lambda message: log.console.append((message.type, message.text)))
            page.on("pageerror", lambda error: log.errors.append(str(error)))
            page.on("request", lambda request: log.requests.append(request.url))
            yield page, log
        finally:
            context.close()


@contextmanager
def tensorboard_server(logdir: Path, executable: str) -> Iterator[str]:
    """TensorBoard serving `logdir` on the loopback interface only; its URL once it answers, stopped afterwards."""
    port = free_port()
    command = [executable, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"tensorboard did not start: {server.stderr.read()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
