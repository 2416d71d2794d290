"""torch.compile of the backbone's training forward that never stops a run: inductor's FX-graph and autograd
caches in a folder of one's choosing, the first compile timed, and a compile that fails or outlasts its time
falling back to eager with one warning."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.exc import TorchDynamoException

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "lite", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


class CompileTimeout(Exception):
    """A first compile took longer than its time."""


class CompileFallbackWarning(RuntimeWarning):
    """torch.compile failed or timed out; the model runs eagerly."""


def use_compile_cache(directory: str | Path) -> Path:
    """Keep inductor's FX-graph and AOT-autograd caches (on by default in torch) under `directory`, so that a later
    process compiling the same graphs loads them instead; the folder, absolute."""
    folder = Path(directory).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    return folder


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise CompileTimeout in the block after `seconds` (SIGALRM: only in the main thread of a Unix process;
    elsewhere, or with None, no limit)."""
    main_thread = threading.current_thread() is threading.main_thread()
    if seconds is None or not hasattr(signal, "setitimer") or not main_thread:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CompileTimeout(f"the first compile took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class CompiledForward:
    """`forward` through torch.compile in `mode`: the first call (where dynamo and inductor compile the forward
    graph) may take at most `timeout_s` seconds (`compile_seconds` records it), and a compile error on any call
    (or that timeout) warns once (CompileFallbackWarning) and runs `forward` eagerly from then on (`fallback` says
    why). `cache_dir`, when given, holds inductor's caches (see `use_compile_cache`)."""

    def __init__(
        self,
        forward: Callable[..., Any],
        *,
        mode: str = "default",
        timeout_s: float | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.eager = forward
        self.timeout_s = timeout_s
        self.compile_seconds: float | None = None
        self.fallback: str | None = None
        self.compiled: Callable[..., Any] | None = None
        if cache_dir is not None:
            use_compile_cache(cache_dir)
        try:
            self.compiled = torch.compile(forward, mode=None if mode == "default" else mode)
        except Exception as error:  # torch.compile refuses its arguments (an unknown mode, no backend)
            self._fall_back(f"torch.compile(mode={mode!r}) failed: {error}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        first = self.compile_seconds is None
        started = time.perf_counter()
        try:
            with deadline(self.timeout_s if first else None):
                outputs = self.compiled(*args, **kwargs)
        except (TorchDynamoException, CompileTimeout) as error:
            self._fall_back(f"{type(error).__name__}: {' '.join(str(error).split())[:300]}")
            return self.eager(*args, **kwargs)
        if first:
            self.compile_seconds = time.perf_counter() - started
            log.info("compiled the backbone's training forward in %.1f s", self.compile_seconds)
        return outputs

    def _fall_back(self, reason: str) -> None:
        self.compiled, self.fallback = None, reason
        warnings.warn(
            f"model.compile: {reason}; training continues without compiling (eager). Set model.compile=false to "
            "skip it, or raise model.compile_timeout_s",
            CompileFallbackWarning,
            stacklevel=3,
        )
