"""The model runs off the event loop, in one worker thread that micro-batches requests.

While the model runs, new requests queue up; the next forward pass takes every queued request
(up to ``max_batch``), optionally waiting ``window_ms`` for more (0 by default: a lone request
never waits, and under load batches form by themselves). Requests that share a mask spec go
through one forward pass; requests with different specs are batched separately, so masks never mix. Each
request carries its own frames, so histories never mix either.

Faults stay with their owner: requests arrive already validated (``VLAPolicy.prepare``), and if a
batched forward fails anyway its members are run again one by one, so only the request that cannot
run gets the error. Work nobody waits for is skipped: a request whose caller went away or whose
deadline passed is dropped before it runs. The queue is bounded, and the worker reports how long
its current batch has run, which the server's health check reads.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..attention import FutureMaskSpec
from ..model import ActionResult, PreparedObservation, VLAPolicy


class QueueFull(Exception):
    """More requests are waiting for the model than the server accepts."""


@dataclass
class Job:
    observation: PreparedObservation
    spec: FutureMaskSpec
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: float | None  # time.monotonic() seconds
    enqueued: float = field(default_factory=time.perf_counter)
    abandoned: bool = False  # the caller stopped waiting (cancelled, disconnected)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


@dataclass
class BatchedResult:
    result: ActionResult
    queue_ms: float
    batch_size: int


class ModelWorker:
    def __init__(self, policy: VLAPolicy, max_batch: int = 8, window_ms: float = 2.0, max_queue: int = 64) -> None:
        self.policy, self.max_batch, self.window_s, self.max_queue = policy, max_batch, window_ms / 1e3, max_queue
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0  # submitted and not yet resolved; touched on the event loop only
        self._busy_since: float | None = None  # time.monotonic() when the running batch started
        self.batches = 0
        self.dropped = 0  # requests skipped because nobody waited for them any more
        self._thread = threading.Thread(target=self._run, name="fm-agent-model", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def busy_for(self) -> float:
        """Seconds the current batch has been running (0 when idle); infinite if the worker died."""
        if not self._thread.is_alive():
            return float("inf")
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    async def submit(
        self, observation: PreparedObservation, spec: FutureMaskSpec, deadline: float | None
    ) -> BatchedResult:
        if self._pending >= self.max_queue:
            raise QueueFull(
                f"{self._pending} requests are waiting for the model, the server's limit "
                f"(max_queued_requests {self.max_queue}); retry later"
            )
        loop = asyncio.get_running_loop()
        job = Job(observation, spec, loop.create_future(), loop, deadline)
        self._pending += 1
        self._queue.put(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.abandoned = True  # read by the worker thread before it runs the job
            raise

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

    def _live(self, jobs: list[Job]) -> list[Job]:
        """The jobs someone still waits for; the others are resolved (and counted) without running."""
        now, live = time.monotonic(), []
        for job in jobs:
            if job.abandoned:
                self.dropped += 1
                _resolve(self, job, error=TimeoutError("the caller went away"))
            elif job.expired(now):
                self.dropped += 1
                _resolve(self, job, error=TimeoutError("the deadline passed while the request was queued"))
            else:
                live.append(job)
        return live

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            groups: dict[FutureMaskSpec, list[Job]] = {}
            for job in self._collect(first):
                groups.setdefault(job.spec, []).append(job)
            for spec, group in groups.items():
                group = self._live(group)  # checked per group: earlier groups took time
                if group:
                    self._run_group(spec, group)
            del first, groups, group  # the last batch's frames are not kept alive while idle

    def _run_group(self, spec: FutureMaskSpec, group: list[Job]) -> None:
        started = time.perf_counter()
        self._busy_since = time.monotonic()
        try:
            try:
                results = self.policy.predict_prepared([j.observation for j in group], spec)
            except Exception as error:
                if len(group) == 1:
                    _resolve(self, group[0], error=error)
                    return
                for job in group:  # one bad member must not fail the others: each runs alone
                    self._run_group(spec, [job])
                return
            self.batches += 1
            for job, result in zip(group, results):
                _resolve(self, job, BatchedResult(result, (started - job.enqueued) * 1e3, len(group)))
        finally:
            self._busy_since = None


def _resolve(worker: ModelWorker, job: Job, value: Any = None, error: BaseException | None = None) -> None:
    """Hand a job's outcome to its event loop; exactly once per job, so the pending count stays true."""

    def apply() -> None:
        worker._pending -= 1
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)

    try:
        job.loop.call_soon_threadsafe(apply)
    except RuntimeError:  # the loop is closed (server shut down): nobody is left to tell
        pass
