"""The chunk executor on its simulated clock: a policy call takes a known number of control periods, so
waits, drops and merges are exact (no real time is measured)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fm_agent_client.executor import (
    AsyncChunkExecutor,
    ChunkExecutor,
    ChunkSchedule,
    ExecutorOptions,
    ExecutorStats,
    action_jerk,
)

HZ = 10.0  # 0.1 s per tick


def chunk_policy(chunk: int):
    """Each call returns ``chunk`` actions, all equal to the step index of its observation."""

    def infer(observation: int) -> np.ndarray:
        return np.full((chunk, 2), float(observation))

    return infer


def run(executor: ChunkExecutor, ticks: int) -> list[np.ndarray]:
    actions = []
    for t in range(ticks):
        actions.append(executor.step(t if executor.needs_observation() else None))
    return actions


def simulated(latency_ticks: float, chunk: int, **options) -> ChunkExecutor:
    """An executor on the library's own SimulatedClock: each call takes ``latency_ticks`` control periods."""
    return ChunkExecutor(
        chunk_policy(chunk), ExecutorOptions(control_hz=HZ, simulated_latency_ms=1e3 * latency_ticks / HZ, **options)
    )


def test_without_prefetch_the_robot_waits_for_every_chunk() -> None:
    executor = simulated(latency_ticks=2, chunk=4)
    actions = run(executor, 12)
    stats = executor.stats
    assert stats.requests == 3 and stats.waits == 3
    assert stats.wait_s == pytest.approx(3 * 0.2)
    assert stats.dropped == 0 and stats.merged == 0
    # each chunk comes from the observation of the tick that asked for it
    assert [a[0] for a in actions] == [0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8]


def test_prefetch_hides_the_latency_after_the_first_chunk() -> None:
    executor = simulated(latency_ticks=2, chunk=6, prefetch_threshold=3)
    run(executor, 30)
    stats = executor.stats
    assert stats.waits == 1, "only the first chunk is waited for"
    # a chunk asked for with 3 actions left arrives 2 ticks later: 2 of its actions are stale, 1 overlaps
    assert stats.requests == 10  # one call per 3 ticks after the first
    assert stats.dropped == 2 * (stats.requests - 1) and stats.merged == stats.requests - 1


def test_a_chunk_shorter_than_the_latency_is_asked_again() -> None:
    executor = simulated(latency_ticks=3, chunk=2, prefetch_threshold=1)
    actions = run(executor, 10)
    assert len(actions) == 10 and executor.stats.dropped > 0


def test_the_rate_is_kept_and_lateness_counted() -> None:
    executor = simulated(latency_ticks=0, chunk=4)
    run(executor, 10)
    assert executor.clock() == pytest.approx(10 / HZ) and executor.stats.late_ticks == 0


def test_a_call_shorter_than_a_period_arrives_by_the_next_tick() -> None:
    """The setting of the LIBERO aggregation study: chunk 4, 20 Hz, 40 ms, asked with 2 actions left.
    Every chunk after the first loses the step that passed during the call and merges one more."""
    executor = ChunkExecutor(
        chunk_policy(4), ExecutorOptions(control_hz=20.0, prefetch_threshold=2, simulated_latency_ms=40.0)
    )
    actions = run(executor, 21)
    stats = executor.stats
    assert stats.waits == 1 and stats.wait_s == pytest.approx(0.04)  # the first chunk only
    assert stats.requests == 11 and stats.dropped == 9 and stats.merged == 9  # the call at tick 20 is in flight
    assert [a[0] for a in actions[:8]] == [0, 0, 0, 2, 2, 4, 4, 6]  # latest: the newer chunk wins
    assert executor.clock() == pytest.approx(0.04 + 21 / 20.0)


def test_a_failed_call_raises_in_the_caller_on_the_simulated_clock() -> None:
    def broken(observation: int) -> np.ndarray:
        raise RuntimeError("server down")

    executor = ChunkExecutor(broken, ExecutorOptions(control_hz=HZ, simulated_latency_ms=10.0))
    with pytest.raises(RuntimeError, match="server down"):
        executor.step(0)


def schedule_with_overlap(aggregate: str, **kw) -> np.ndarray:
    schedule, stats = ChunkSchedule(aggregate, **kw), ExecutorStats()
    schedule.add(np.array([[0.0], [0.0], [0.0]]), start=0, now=0, stats=stats)  # predicts steps 0-2
    schedule.add(np.array([[9.0], [1.0], [1.0]]), start=0, now=1, stats=stats)  # step 0 already passed
    schedule.add(np.array([[2.0], [2.0]]), start=2, now=1, stats=stats)
    assert stats.dropped == 1
    schedule.pop(1, stats)
    value = schedule.pop(2, stats)  # predicted by all three chunks: 0, 1, 2
    assert stats.merged == 1 + 2
    return value


def test_latest_average_and_temporal_ensembling() -> None:
    assert schedule_with_overlap("latest")[0] == 2.0
    assert schedule_with_overlap("average", new_weight=0.5)[0] == pytest.approx((0.5 * 0 + 0.5 * 1) * 0.5 + 0.5 * 2)
    weights = np.exp(-0.5 * np.arange(3))
    assert schedule_with_overlap("ensemble", ensemble_decay=0.5)[0] == pytest.approx(
        (weights * [0, 1, 2]).sum() / weights.sum()
    )


def test_discrete_actions_merge_only_as_latest() -> None:
    with pytest.raises(ValueError, match="latest"):
        ChunkSchedule("average").add(np.array([1, 2]), 0, 0, ExecutorStats())
    stats = ExecutorStats()
    schedule = ChunkSchedule("latest")
    schedule.add(np.array([1, 2]), 0, 0, stats)
    assert schedule.pop(0, stats) == 1


def test_bad_options_are_refused() -> None:
    for options in (
        ExecutorOptions(control_hz=0),
        ExecutorOptions(prefetch_threshold=-1),
        ExecutorOptions(control_hz=HZ, simulated_latency_ms=-1.0),
        ExecutorOptions(control_hz=HZ, simulated_latency_ms=float("nan")),
    ):
        with pytest.raises(ValueError):
            ChunkExecutor(chunk_policy(2), options)
    with pytest.raises(ValueError, match="control_hz"):
        ChunkExecutor(chunk_policy(2), ExecutorOptions(simulated_latency_ms=40.0))
    with pytest.raises(ValueError, match="synchronous"):
        AsyncChunkExecutor(chunk_policy(2), ExecutorOptions(control_hz=HZ, simulated_latency_ms=40.0))
    with pytest.raises(ValueError, match="aggregate"):
        ChunkExecutor(chunk_policy(2), ExecutorOptions(aggregate="median"))


def test_the_first_step_needs_an_observation() -> None:
    with ChunkExecutor(chunk_policy(2)) as executor, pytest.raises(ValueError, match="observation"):
        executor.step()


def test_a_real_thread_executes_the_same_actions() -> None:
    """The default background thread, unpaced: the same actions as the simulated run without prefetch."""
    with ChunkExecutor(chunk_policy(4)) as executor:
        actions = run(executor, 8)
    assert [a[0] for a in actions] == [0, 0, 0, 0, 4, 4, 4, 4] and executor.stats.requests == 2


def test_asyncio_executor() -> None:
    async def infer(observation: int) -> np.ndarray:
        await asyncio.sleep(0)
        return np.full((4, 1), float(observation))

    async def main() -> tuple[list[float], ExecutorStats]:
        executor = AsyncChunkExecutor(infer, ExecutorOptions(prefetch_threshold=2, aggregate="average"))
        out = []
        for t in range(12):
            action = await executor.step(t if executor.needs_observation() else None)
            out.append(float(action[0]))
        await executor.aclose()
        return out, executor.stats

    actions, stats = asyncio.run(main())
    assert len(actions) == 12 and stats.requests >= 3 and stats.merged > 0


def test_action_jerk() -> None:
    assert action_jerk(np.zeros((10, 7))) == 0
    ramp = np.arange(10.0)[:, None] * np.ones((1, 3))
    assert action_jerk(ramp) == 0  # constant change of command: no jerk
    zigzag = np.array([[0.0], [1.0], [0.0], [1.0]])
    assert action_jerk(zigzag) == 2.0
