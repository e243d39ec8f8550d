"""The model runs off the event loop, in one worker thread that micro-batches requests.

While the model runs, new requests queue up; the next forward pass takes every queued request
(up to ``max_batch``), optionally waiting ``window_ms`` for more (0 by default: a lone request
never waits, and under load batches form by themselves). Requests that share a mask spec go
through one forward pass; requests with different specs are batched separately, so masks never mix. Each
request carries its own frames, so histories never mix either.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..attention import FutureMaskSpec
from ..model import ActionResult, Observation, VLAPolicy


@dataclass
class Job:
    observation: Observation
    spec: FutureMaskSpec
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: float | None  # time.monotonic() seconds
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchedResult:
    result: ActionResult
    queue_ms: float
    batch_size: int


class ModelWorker:
    def __init__(self, policy: VLAPolicy, max_batch: int = 8, window_ms: float = 2.0) -> None:
        self.policy, self.max_batch, self.window_s = policy, max_batch, window_ms / 1e3
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="fm-agent-model", daemon=True)
        self.batches = 0
        self._thread.start()

    async def submit(self, observation: Observation, spec: FutureMaskSpec, deadline: float | None) -> BatchedResult:
        loop = asyncio.get_running_loop()
        job = Job(observation, spec, loop.create_future(), loop, deadline)
        self._queue.put(job)
        return await job.future

    def close(self, timeout: float = 30.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _collect(self, first: Job) -> list[Job]:
        jobs, end = [first], time.perf_counter() + self.window_s
        while len(jobs) < self.max_batch:
            remaining = end - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # keep the stop signal for the main loop
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = self._collect(first)
            now = time.monotonic()
            live = []
            for job in jobs:
                if job.deadline is not None and now > job.deadline:
                    _resolve(job, error=TimeoutError("the deadline passed while the request was queued"))
                else:
                    live.append(job)
            groups: dict[FutureMaskSpec, list[Job]] = {}
            for job in live:
                groups.setdefault(job.spec, []).append(job)
            for spec, group in groups.items():
                started = time.perf_counter()
                try:
                    results = self.policy.predict([j.observation for j in group], spec)
                except Exception as error:  # surfaced to each caller; the worker keeps serving
                    for job in group:
                        _resolve(job, error=error)
                    continue
                self.batches += 1
                for job, result in zip(group, results):
                    _resolve(job, BatchedResult(result, (started - job.enqueued) * 1e3, len(group)))


def _resolve(job: Job, value: Any = None, error: BaseException | None = None) -> None:
    def apply() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)

    job.loop.call_soon_threadsafe(apply)
