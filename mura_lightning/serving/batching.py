"""Micro-batching: the studies of concurrent requests wait in an asyncio queue and are run together, whole, by one
worker thread that owns the model; each request gets back exactly its own study's scores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mura_lightning.inference.explain import batch_cams
from mura_lightning.inference.model import InferenceModel
from mura_lightning.models.segments import Segments


@dataclass
class StudyJob:
    """One request's study: its views' model inputs (N, C, S, S), whether it wants CAMs, and the future its
    result is set on."""

    inputs: torch.Tensor
    cam: bool
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class StudyResult:
    """A study's scores: its probability, each view's probability and weight, each view's CAM at the model's input
    size (or None), and how long it waited and how long its batch ran, in seconds."""

    probability: float
    view_probs: np.ndarray
    weights: np.ndarray
    cams: np.ndarray | None
    queued_s: float
    model_s: float
    batch_images: int


class QueueFullError(Exception):
    """More studies wait for the model than serve.limits.max_queued_studies."""


class StudyScorer:
    """Scores a batch of whole studies with the inference core (`InferenceModel.score`, each study a segment) and
    computes the CAMs of the studies that ask for them, as predict does (`batch_cams`)."""

    def __init__(self, model: InferenceModel, cam_method: str) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.net = model.members()[0]
        self.layer = model.cam_target_layers()[0]
        self.cam_method = cam_method

    def __call__(self, jobs: Sequence[StudyJob]) -> list[StudyResult]:
        started = time.perf_counter()
        sizes = [len(job.inputs) for job in jobs]
        studies = torch.repeat_interleave(torch.arange(len(jobs)), torch.tensor(sizes)).to(self.device)
        inputs = torch.cat([job.inputs for job in jobs]).to(self.device)
        segments, ids = Segments.of(studies)
        with torch.no_grad():
            scores = self.model.score(inputs, segments)
        study_probs = np.empty(len(jobs))
        study_probs[ids.cpu().numpy()] = scores.study_probs.float().cpu().numpy()
        view_probs, weights = scores.view_probs.float().cpu().numpy(), scores.weights.float().cpu().numpy()
        model_s = time.perf_counter() - started
        results, start = [], 0
        for job, size, probability in zip(jobs, sizes, study_probs, strict=True):
            rows = slice(start, start + size)
            cams = None
            if job.cam:
                one_study = torch.zeros(size, dtype=torch.long, device=self.device)
                cams = batch_cams(self.net, self.layer, inputs[rows], one_study, self.cam_method)
            results.append(
                StudyResult(
                    float(probability),
                    view_probs[rows],
                    weights[rows],
                    cams,
                    started - job.enqueued,
                    model_s,
                    len(inputs),
                )
            )
            start += size
        return results


class MicroBatcher:
    """Collects studies from concurrent requests into batches of at most `max_images` images (whole studies; a
    larger study runs alone), waiting at most `max_wait_s` after a batch's first study for others, and runs each
    batch in one worker thread (`run`: jobs -> one result per job, in order). `on_batch(images)` is told each
    batch's size. `stop` lets the queued studies finish first."""

    def __init__(
        self,
        run: Callable[[Sequence[StudyJob]], list[StudyResult]],
        *,
        max_images: int,
        max_wait_s: float,
        max_queued: int,
        on_batch: Callable[[int], Any] | None = None,
    ) -> None:
        self.run = run
        self.max_images = max_images
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self.on_batch = on_batch
        self.queue: asyncio.Queue[StudyJob | None] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.task: asyncio.Task | None = None
        self.held: StudyJob | None = None

    def start(self) -> None:
        """Start collecting and running batches (in the running event loop)."""
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Run what is queued, then stop the worker thread."""
        await self.queue.put(None)
        if self.task is not None:
            await self.task
        self.executor.shutdown(wait=True)

    @property
    def running(self) -> bool:
        """Whether batches are being collected and run."""
        return self.task is not None and not self.task.done()

    async def score(self, inputs: torch.Tensor, cam: bool) -> StudyResult:
        """The scores of one study (its views' model inputs), run in a batch with other requests' studies."""
        if self.queue.qsize() >= self.max_queued:
            raise QueueFullError(f"{self.queue.qsize()} studies are waiting for the model")
        job = StudyJob(inputs, cam, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _next_batch(self) -> list[StudyJob] | None:
        """The next batch: the held-over study or the next queued one, joined by those that arrive before the
        first one has waited max_wait_s, while they fit; None once stopped and empty."""
        first = self.held if self.held is not None else await self.queue.get()
        self.held = None
        if first is None:
            return None
        jobs, images = [first], len(first.inputs)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, self.max_wait_s - (time.perf_counter() - first.enqueued))
        while images < self.max_images:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if job is None:  # stopping: this batch is the last but for what was queued before
                self.queue.put_nowait(None)
                break
            if images + len(job.inputs) > self.max_images:
                self.held = job
                break
            jobs.append(job)
            images += len(job.inputs)
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while (jobs := await self._next_batch()) is not None:
            live = [job for job in jobs if not job.future.done()]  # a client gone away cancels its future
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(sum(len(job.inputs) for job in live))
            try:
                results = await loop.run_in_executor(self.executor, self.run, live)
            except Exception as err:  # the batch failed: each of its requests is told, the service goes on
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            for job, result in zip(live, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
