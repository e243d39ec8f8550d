"""The evaluation loop with the client's ChunkExecutor: without prefetch it executes exactly what the
open-loop chunk loop executes; with prefetch it asks earlier, renders only when a call starts, and
reports the robot's waits and the motion's jerk."""

from __future__ import annotations

import numpy as np
import pytest

from fm_agent.evaluation.config import LiberoEvalConfig
from fm_agent.evaluation.rollout import run_episode, summarise
from fm_agent.jobs import ConfigError
from fm_agent_client.executor import ExecutorOptions


class CountingEnv:
    """A 1-d point that moves by each action; renders are counted; success after 30 steps."""

    supports_blind_steps = True
    max_steps = 40

    def __init__(self) -> None:
        self.renders = 0

    def reset(self, seed=None, options=None):
        self.t, self.x = 0, 0.0
        self.renders += 1
        return {"x": self.x, "t": self.t}, {"instruction": "go"}

    def step(self, action, render: bool = True):
        self.t += 1
        self.x += float(np.asarray(action).reshape(-1)[0])
        self.renders += render
        success = self.t >= 30
        return {"x": self.x, "t": self.t}, float(success), success, False, {"success": success}


class ChunkActor:
    """Chunks of 4 actions that depend on the observation's step, so any reordering would show."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def start_episode(self, instruction: str, seed: int = 0) -> None:
        self.calls.clear()

    def act(self, observation):
        self.calls.append(observation["t"])
        t = observation["t"]
        return np.array([[np.sin(t + k)] for k in range(4)], dtype=np.float32), {"server_ms": 1.0}

    def end_episode(self) -> None:
        pass


def test_executor_without_prefetch_executes_what_the_open_loop_executes() -> None:
    runs = {}
    for name, options in (("open_loop", None), ("executor", ExecutorOptions(aggregate="latest"))):
        env, actor = CountingEnv(), ChunkActor()
        result = run_episode(env, actor, "fake", 0, 0, executor=options)
        runs[name] = (result, env, list(actor.calls))
    (a, env_a, calls_a), (b, env_b, calls_b) = runs["open_loop"], runs["executor"]
    assert a.success and b.success and a.steps == b.steps == 30
    assert calls_a == calls_b == [0, 4, 8, 12, 16, 20, 24, 28]
    assert env_a.renders == env_b.renders  # cameras only where a call reads them
    assert a.action_jerk == b.action_jerk and a.action_jerk is not None
    assert b.executor["requests"] == 8 and b.executor["dropped"] == b.executor["merged"] == 0


def test_prefetch_asks_before_the_queue_runs_out_and_merges() -> None:
    env, actor = CountingEnv(), ChunkActor()
    result = run_episode(env, actor, "fake", 0, 0, executor=ExecutorOptions(prefetch_threshold=2, aggregate="average"))
    assert result.success and result.executor is not None
    assert result.executor["requests"] > 8  # a call every 2-3 steps instead of every 4
    summary = summarise([result])
    assert summary["executor"]["requests"] == result.executor["requests"] and "action_jerk" in summary


def test_simulated_latency_sets_when_chunks_arrive_not_the_simulator() -> None:
    """On the simulated clock the same options give the same schedule whatever the env costs: chunk 4 at
    20 Hz, 40 ms calls asked with 2 actions left, so each later chunk drops one step and merges one."""
    options = ExecutorOptions(control_hz=20.0, prefetch_threshold=2, aggregate="ensemble", simulated_latency_ms=40.0)
    env, actor = CountingEnv(), ChunkActor()
    result = run_episode(env, actor, "fake", 0, 0, executor=options)
    assert result.success and result.steps == 30 and result.executor is not None
    assert actor.calls == list(range(0, 30, 2))
    assert result.executor["waits"] == 1 and result.executor["late_ticks"] == 0
    assert result.executor["dropped"] == result.executor["merged"] == 14


def test_executor_flags_need_an_executor_and_a_rate() -> None:
    with pytest.raises(ConfigError, match="simulated-latency-ms"):
        LiberoEvalConfig(simulated_latency_ms=40.0).validate()
    with pytest.raises(ConfigError, match="control_hz"):
        LiberoEvalConfig(executor="latest", simulated_latency_ms=40.0).validate()
    LiberoEvalConfig(executor="latest", control_hz=20.0, simulated_latency_ms=40.0).validate()
