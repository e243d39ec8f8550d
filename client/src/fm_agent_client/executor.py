"""Executing action chunks the way a robot controller does: at a fixed rate, the next chunk requested
before the current one runs out, the overlap of consecutive chunks merged.

A policy call returns a chunk of actions for the steps starting at the step whose observation it was
given. With ``prefetch_threshold`` p > 0, the next call starts as soon as only p actions are left,
in a background thread (or task), so the robot keeps moving while the model runs. When that chunk
arrives, its actions for steps that already passed during the call are stale and dropped. Its
actions for steps still queued overlap the previous chunk's, and are merged by ``aggregate``:

- ``latest``: the newest chunk wins (openpi's broker, LeRobot's ``latest_only``);
- ``average``: ``(1 - w) * old + w * new`` for each newer prediction, with ``w = new_weight``
  (LeRobot's ``weighted_average`` uses 0.7);
- ``ensemble``: ACT's temporal ensembling, every prediction for the step weighted by
  ``exp(-m * i)`` (``i = 0`` the oldest; ``m = ensemble_decay``), then normalised.

Discrete actions (integer arrays) can only be ``latest``. ``stats`` says what the robot saw:
- how many ticks it had to wait for a chunk, and for how long;
- how many ticks ran past the control period;
- how many predictions were dropped as stale or merged into another.

A simulator that cannot keep real time (LIBERO renders a frame in longer than a 20 Hz period on a
CPU) makes every tick late, so chunks arrive stale whatever the policy's latency. With
``simulated_latency_ms`` set, :class:`ChunkExecutor` runs on a :class:`SimulatedClock` instead: a tick
takes exactly one control period, the caller's own work (the simulator step) takes no time, and each
policy call is computed at once but delivered that many milliseconds later. Waits, drops and merges
then depend only on the latency, the rate and the options, the same in every run, on any machine.

The executor never imports fm-agent: ``infer`` is any callable from an observation to a
``(chunk, dims)`` or ``(chunk,)`` array, e.g. ``lambda obs: client.act(episode, **obs).actions``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

AGGREGATES = ("latest", "average", "ensemble")


@dataclass
class ExecutorStats:
    ticks: int = 0  # actions executed
    requests: int = 0  # policy calls started
    waits: int = 0  # ticks at which no action was queued, so the robot waited for a chunk
    wait_s: float = 0.0  # total time spent waiting
    late_ticks: int = 0  # ticks that ended after their control period (the loop fell behind)
    dropped: int = 0  # predictions for steps that had already passed when their chunk arrived
    merged: int = 0  # predictions merged into another one for the same step

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {k: float(v) for k, v in asdict(self).items()}
        out["wait_fraction"] = self.waits / self.ticks if self.ticks else 0.0
        out["mean_wait_ms"] = 1e3 * self.wait_s / self.waits if self.waits else 0.0
        return out


class ChunkSchedule:
    """Predicted actions per future step, and their merging; no threads, no clocks (tested on its own)."""

    def __init__(self, aggregate: str = "latest", new_weight: float = 0.7, ensemble_decay: float = 0.01) -> None:
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        if not 0 < new_weight <= 1:
            raise ValueError(f"new_weight must be in (0, 1], got {new_weight}")
        if not math.isfinite(ensemble_decay) or ensemble_decay < 0:
            raise ValueError(f"ensemble_decay must be >= 0, got {ensemble_decay}")
        self.aggregate, self.new_weight, self.decay = aggregate, new_weight, ensemble_decay
        self._predictions: dict[int, list[np.ndarray]] = {}  # step -> predictions, oldest first

    def add(self, chunk: np.ndarray, start: int, now: int, stats: ExecutorStats) -> None:
        """Queue ``chunk``, predicted from the observation of step ``start``; steps before ``now`` are gone."""
        chunk = np.asarray(chunk)
        if chunk.ndim == 0 or len(chunk) == 0:
            raise ValueError("a chunk holds at least one action")
        if chunk.dtype.kind in "iu" and self.aggregate != "latest":
            raise ValueError(f"discrete actions cannot be merged by {self.aggregate!r}: use aggregate='latest'")
        for offset, action in enumerate(chunk):
            step = start + offset
            if step < now:
                stats.dropped += 1
            else:
                self._predictions.setdefault(step, []).append(action)

    def pending(self, now: int) -> int:
        """Queued steps from ``now`` on (consecutive: a chunk always covers a run of steps)."""
        count = 0
        while now + count in self._predictions:
            count += 1
        return count

    def pop(self, now: int, stats: ExecutorStats) -> np.ndarray:
        """The merged action of step ``now``; every prediction of steps up to ``now`` is released."""
        for step in [s for s in self._predictions if s < now]:
            del self._predictions[step]
        predictions = self._predictions.pop(now)
        stats.merged += len(predictions) - 1
        if len(predictions) == 1 or self.aggregate == "latest":
            return predictions[-1]
        stacked = np.stack([p.astype(np.float64) for p in predictions])
        if self.aggregate == "average":
            merged = stacked[0]
            for newer in stacked[1:]:
                merged = (1 - self.new_weight) * merged + self.new_weight * newer
        else:
            weights = np.exp(-self.decay * np.arange(len(stacked)))
            merged = (weights[:, None] * stacked.reshape(len(stacked), -1)).sum(0) / weights.sum()
            merged = merged.reshape(stacked.shape[1:])
        return merged.astype(predictions[-1].dtype)


@dataclass
class ExecutorOptions:
    """``control_hz``: the fixed rate (None: no pacing, as fast as the caller steps; waits are still
    counted). ``prefetch_threshold``: start the next call when this many actions are left (0: only
    when the queue is empty, the robot waits for every call)."""

    control_hz: float | None = None
    prefetch_threshold: int = 0
    aggregate: str = "latest"
    new_weight: float = 0.7
    ensemble_decay: float = 0.01
    simulated_latency_ms: float | None = None
    """run on a :class:`SimulatedClock` where every policy call takes this long (None: the wall clock)"""

    def check(self) -> None:
        if self.control_hz is not None and not (math.isfinite(self.control_hz) and self.control_hz > 0):
            raise ValueError(f"control_hz must be > 0, got {self.control_hz}")
        if self.prefetch_threshold < 0:
            raise ValueError(f"prefetch_threshold must be >= 0, got {self.prefetch_threshold}")
        if self.simulated_latency_ms is not None:
            if not (math.isfinite(self.simulated_latency_ms) and self.simulated_latency_ms >= 0):
                raise ValueError(f"simulated_latency_ms must be >= 0, got {self.simulated_latency_ms}")
            if self.control_hz is None:
                raise ValueError("simulated_latency_ms needs control_hz: on a simulated clock only ticks move time")


class SimulatedClock:
    """Time that moves only by whole control periods (the executor's sleeps) and by waits for a call.

    ``submit`` computes the call at once, in the caller's thread, and returns a future that is done
    ``latency_s`` of simulated time later; waiting on it moves the clock to that moment (the robot
    held still that long). It stands in for the wall clock, not for the policy: the actions are the
    policy's own, only their arrival time is fixed.
    """

    def __init__(self, latency_s: float) -> None:
        self.now, self.latency_s = 0.0, latency_s

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        call = _SimulatedCall(self, self.now + self.latency_s)
        try:
            call.set_result(fn(*args))
        except Exception as error:  # noqa: BLE001  (delivered to the caller when it collects the chunk)
            call.set_exception(error)
        return call


class _SimulatedCall(Future):
    def __init__(self, clock: SimulatedClock, ready_at: float) -> None:
        super().__init__()
        self._clock, self._ready_at = clock, ready_at

    def done(self) -> bool:
        return self._clock.now >= self._ready_at - 1e-12

    def result(self, timeout: float | None = None) -> Any:
        self._clock.now = max(self._clock.now, self._ready_at)
        return super().result(timeout)


class _Base:
    def __init__(self, options: ExecutorOptions | None, clock: Callable[[], float]) -> None:
        self.options = options or ExecutorOptions()
        self.options.check()
        self.schedule = ChunkSchedule(self.options.aggregate, self.options.new_weight, self.options.ensemble_decay)
        self.stats = ExecutorStats()
        self.clock = clock
        self.step_index = 0
        self._start_time: float | None = None
        self._latest: Any = None

    def needs_observation(self) -> bool:
        """Whether the next :meth:`step` starts a policy call, so it must be given an observation (render
        the cameras only then)."""
        return not self._in_flight() and self.schedule.pending(self.step_index) <= self.options.prefetch_threshold

    def _in_flight(self) -> bool:
        raise NotImplementedError

    def _request(self, observation: Any) -> None:
        raise NotImplementedError

    def _begin(self, observation: Any) -> None:
        """A tick's start, on either executor: start the next call if the queue is low enough."""
        if self.needs_observation():
            self._request(self._observation(observation))
        elif observation is not None:
            self._latest = observation

    def _finish(self, waited_since: float | None) -> tuple[np.ndarray, float]:
        """A tick's end: count the wait (if the robot waited), pop the action; returns it and the pause."""
        if waited_since is not None:
            self.stats.waits += 1
            self.stats.wait_s += self.clock() - waited_since
        action = self.schedule.pop(self.step_index, self.stats)
        self.step_index += 1
        self.stats.ticks += 1
        return action, self._delay()

    def _accept(self, chunk: np.ndarray, start: int) -> None:
        self.schedule.add(chunk, start, self.step_index, self.stats)

    def _delay(self) -> float:
        """Seconds to sleep after a tick to keep the rate (0 when behind, counted as late)."""
        if self.options.control_hz is None:
            return 0.0
        if self._start_time is None:
            self._start_time = self.clock()
        due = self._start_time + self.step_index / self.options.control_hz
        delay = due - self.clock()
        if delay < 0:
            self.stats.late_ticks += 1
            self._start_time -= delay  # fall behind once, not forever: the schedule restarts from now
            return 0.0
        return delay

    def _observation(self, observation: Any) -> Any:
        if observation is not None:
            self._latest = observation
        if self._latest is None:
            raise ValueError("this step starts a policy call: pass the current observation")
        return self._latest


class ChunkExecutor(_Base):
    """Synchronous executor: the policy call runs in one background thread (or whatever ``submit``,
    ``Executor.submit``-like, hands it to), or on a :class:`SimulatedClock` when the options set
    ``simulated_latency_ms``."""

    def __init__(
        self,
        infer: Callable[[Any], np.ndarray],
        options: ExecutorOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        submit: Callable[..., Future] | None = None,
    ) -> None:
        latency_ms = (options or ExecutorOptions()).simulated_latency_ms
        if latency_ms is not None:
            simulated = SimulatedClock(latency_ms / 1e3)
            clock, sleep, submit = simulated.clock, simulated.sleep, simulated.submit
        super().__init__(options, clock)
        self.infer, self.sleep = infer, sleep
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fm-agent-chunk") if submit is None else None
        self._submit = submit or self._pool.submit  # type: ignore[union-attr]
        self._future: Future | None = None
        self._future_start = 0

    def _in_flight(self) -> bool:
        return self._future is not None

    def _request(self, observation: Any) -> None:
        self.stats.requests += 1
        self._future_start = self.step_index
        self._future = self._submit(self.infer, observation)

    def _collect(self, block: bool) -> None:
        if self._future is not None and (block or self._future.done()):
            future, self._future = self._future, None
            self._accept(future.result(), self._future_start)  # a failed call raises here, in the caller

    def step(self, observation: Any = None) -> np.ndarray:
        """The action to execute now. ``observation`` is needed when :meth:`needs_observation` says so."""
        self._begin(observation)
        self._collect(block=False)
        started = None
        if self.schedule.pending(self.step_index) == 0:
            started = self.clock()
            while self.schedule.pending(self.step_index) == 0:  # a chunk may come back entirely stale
                if self._future is None:
                    self._request(self._observation(None))
                self._collect(block=True)
        action, delay = self._finish(started)
        if delay > 0:
            self.sleep(delay)
        return action

    def close(self) -> None:
        if self._future is not None:
            self._future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> ChunkExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncChunkExecutor(_Base):
    """asyncio twin: ``infer`` is a coroutine function (e.g. ``AsyncPolicyClient.act``); calls run as tasks."""

    def __init__(
        self,
        infer: Callable[[Any], Awaitable[np.ndarray]],
        options: ExecutorOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if options is not None and options.simulated_latency_ms is not None:
            raise ValueError("simulated_latency_ms is for the synchronous ChunkExecutor")
        super().__init__(options, clock)
        self.infer = infer
        self._task: asyncio.Task | None = None
        self._task_start = 0

    def _in_flight(self) -> bool:
        return self._task is not None

    def _request(self, observation: Any) -> None:
        self.stats.requests += 1
        self._task_start = self.step_index
        self._task = asyncio.ensure_future(self.infer(observation))

    async def _collect(self, block: bool) -> None:
        if self._task is not None and (block or self._task.done()):
            task, self._task = self._task, None
            self._accept(await task, self._task_start)

    async def step(self, observation: Any = None) -> np.ndarray:
        self._begin(observation)
        await asyncio.sleep(0)  # let a finished call deliver its chunk
        await self._collect(block=False)
        started = None
        if self.schedule.pending(self.step_index) == 0:
            started = self.clock()
            while self.schedule.pending(self.step_index) == 0:
                if self._task is None:
                    self._request(self._observation(None))
                await self._collect(block=True)
        action, delay = self._finish(started)
        if delay > 0:
            await asyncio.sleep(delay)
        return action

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001  (closing: its outcome no longer matters)
                pass
            self._task = None


def action_jerk(actions: np.ndarray, dims: slice | None = None) -> float:
    """Mean absolute second difference of a sequence of executed actions (T, D): for velocity or delta
    commands (LIBERO's OSC deltas) that is the jerk of the commanded motion, up to the step time."""
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim == 1:
        actions = actions[:, None]
    if dims is not None:
        actions = actions[:, dims]
    if len(actions) < 3:
        return 0.0
    return float(np.abs(np.diff(actions, n=2, axis=0)).mean())
