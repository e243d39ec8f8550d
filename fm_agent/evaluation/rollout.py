"""Episodes of a policy in an environment, the policy called through a small ``Actor`` interface.

An actor sees one observation per control step and returns a chunk of actions; the loop executes
the chunk open-loop (as OpenVLA-OFT and openpi do) and asks again. The in-process actor keeps the
frame history itself; the gRPC actor lets the server keep it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fm_agent_client.executor import ChunkExecutor, ExecutorOptions, action_jerk


class Actor(Protocol):
    def start_episode(self, instruction: str, seed: int = 0) -> None:
        """``seed`` seeds the policy's action sampling, so a sampled episode can be replayed."""

    def act(self, observation: dict[str, Any]) -> tuple[np.ndarray, dict[str, float]]:
        """Returns (actions (chunk, ...) , timings in ms)."""

    def end_episode(self) -> None: ...


class RandomActor:
    """Uniformly random actions from the environment's action space: the floor a success rate is read
    against. A generous step budget lets even aimless behaviour finish some levels."""

    def __init__(self, action_space) -> None:
        self.action_space = action_space

    def start_episode(self, instruction: str, seed: int = 0) -> None:
        self.action_space.seed(seed)

    def act(self, observation: dict[str, Any]) -> tuple[np.ndarray, dict[str, float]]:
        return np.asarray([self.action_space.sample()]), {}

    def end_episode(self) -> None:
        pass


@dataclass
class EpisodeResult:
    env: str
    episode: int
    seed: int
    success: bool
    steps: int
    metadata: dict = field(default_factory=dict)
    policy_ms: list[float] = field(default_factory=list)
    env_ms: list[float] = field(default_factory=list)
    server_ms: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None
    action_jerk: float | None = None  # mean |second difference| of the executed continuous actions
    executor: dict[str, float] | None = None  # ChunkExecutor statistics, when one executed the chunks


def run_episode(
    env,
    actor: Actor,
    env_name: str,
    episode: int,
    seed: int,
    options: dict | None = None,
    max_steps: int | None = None,
    executor: ExecutorOptions | None = None,
) -> EpisodeResult:
    obs, info = env.reset(seed=seed, options=options)
    actor.start_episode(info["instruction"], seed)
    result = EpisodeResult(env_name, episode, seed, False, 0)
    limit = max_steps or env.max_steps
    blind_steps = bool(getattr(env, "supports_blind_steps", False))
    try:
        if executor is not None:
            info = _run_with_executor(env, actor, obs, info, result, limit, blind_steps, executor)
        else:
            info = _run_open_loop(env, actor, obs, info, result, limit, blind_steps)
        result.success = bool(info.get("success", False))
        result.metadata = {k: info[k] for k in METADATA_KEYS if k in info}
    finally:
        actor.end_episode()
    return result


def _record_call(result: EpisodeResult, actor: Actor, observation: dict[str, Any]) -> np.ndarray:
    """One policy call, its round trip and the server's timings kept in ``result``."""
    start = time.perf_counter()
    actions, timings = actor.act(observation)
    result.policy_ms.append((time.perf_counter() - start) * 1e3)
    for key, value in timings.items():
        result.server_ms.setdefault(key, []).append(value)
    return np.asarray(actions)


def _run_open_loop(env, actor: Actor, obs, info, result: EpisodeResult, limit: int, blind_steps: bool) -> dict:
    """Each chunk executed open-loop, then the next call (as OpenVLA-OFT and openpi do)."""
    executed: list[np.ndarray] = []
    done = False
    while not done and result.steps < limit:
        actions = _record_call(result, actor, obs)
        chunk = actions.reshape(len(actions), -1) if actions.ndim > 1 else actions
        for index, action in enumerate(chunk):
            start = time.perf_counter()
            action = action if np.ndim(action) else int(action)
            executed.append(np.asarray(action))
            if blind_steps and index < len(chunk) - 1:  # the policy will not read this step's images
                obs, _, terminated, truncated, info = env.step(action, render=False)
            else:
                obs, _, terminated, truncated, info = env.step(action)
            result.env_ms.append((time.perf_counter() - start) * 1e3)
            result.steps += 1
            done = terminated or truncated or result.steps >= limit
            if done:
                break
    result.action_jerk = _jerk(executed)
    return info


METADATA_KEYS = ("has_location_phrase", "num_subgoals", "sequence", "init_state")


def _jerk(executed: list[np.ndarray]) -> float | None:
    if not executed or np.asarray(executed[0]).dtype.kind in "iu":
        return None  # discrete actions have no smoothness
    return action_jerk(np.stack(executed))


def _run_with_executor(
    env, actor: Actor, obs, info, result: EpisodeResult, limit: int, blind_steps: bool, options: ExecutorOptions
) -> dict:
    """The loop a robot controller runs: one action per tick from a :class:`ChunkExecutor`, which asks the
    actor for the next chunk in a background thread (with prefetch, while the robot still moves) and
    merges overlapping chunks. Cameras are rendered only at ticks where the next call starts."""

    executed: list[np.ndarray] = []
    with ChunkExecutor(lambda observation: _record_call(result, actor, observation), options) as executor:
        done = False
        while not done and result.steps < limit:
            chosen = executor.step(obs if executor.needs_observation() else None)
            executed.append(np.asarray(chosen))
            action: Any = chosen if np.ndim(chosen) else int(chosen)
            start = time.perf_counter()
            render = executor.needs_observation() or not blind_steps
            if render:
                obs, _, terminated, truncated, info = env.step(action)
            else:  # the next tick starts no call: nobody reads this step's images
                obs, _, terminated, truncated, info = env.step(action, render=False)
            result.env_ms.append((time.perf_counter() - start) * 1e3)
            result.steps += 1
            done = terminated or truncated
        result.executor = executor.stats.summary()
    result.action_jerk = _jerk(executed)
    return info


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval of a success rate (Wilson score: sane at 0% and 100%)."""
    if total == 0:
        return 0.0, 0.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    return {
        "mean": float(array.mean()),
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "p99": float(np.percentile(array, 99)),
    }


def summarise(
    results: Sequence[EpisodeResult], split_keys: Sequence[str] = (), within: Sequence[int] = ()
) -> dict[str, Any]:
    """Success (with a 95% interval) overall, per environment and per metadata value; latency percentiles.

    ``within``: step budgets under which successes are also counted, read off the same episodes (an
    episode that succeeded by step n would have succeeded under a cap of n), so one run under the
    level's own budget also answers for tighter ones.
    """

    def block(rs: Sequence[EpisodeResult]) -> dict[str, Any]:
        wins = sum(r.success for r in rs)
        low, high = wilson_interval(wins, len(rs))
        # A success rate alone hides how long a policy wanders before it gets there: with a generous
        # step budget a dithering policy and an efficient one can score alike.
        return {
            "episodes": len(rs),
            "successes": wins,
            "success_rate": wins / max(1, len(rs)),
            "ci95": [low, high],
            "steps_to_success": percentiles([r.steps for r in rs if r.success]),
            **(
                {"successes_within": {str(n): sum(r.success and r.steps <= n for r in rs) for n in within}}
                if within
                else {}
            ),
        }

    ok = [r for r in results if r.error is None]
    summary: dict[str, Any] = {
        "overall": block(ok),
        "errors": len(results) - len(ok),
        "per_env": {e: block([r for r in ok if r.env == e]) for e in sorted({r.env for r in ok})},
    }
    for key in split_keys:
        values = sorted({r.metadata.get(key) for r in ok}, key=str)
        summary[f"by_{key}"] = {str(v): block([r for r in ok if r.metadata.get(key) == v]) for v in values}
    summary["latency_ms"] = {
        "policy_round_trip": percentiles([x for r in ok for x in r.policy_ms]),
        "env_step": percentiles([x for r in ok for x in r.env_ms]),
    }
    for key in sorted({k for r in ok for k in r.server_ms}):
        summary["latency_ms"][key] = percentiles([x for r in ok for x in r.server_ms.get(key, [])])
    jerks = [r.action_jerk for r in ok if r.action_jerk is not None]
    if jerks:
        summary["action_jerk"] = percentiles(jerks)  # per episode: mean |second difference| of the actions
    runs = [r.executor for r in ok if r.executor]
    if runs:  # what the robot saw under the chunk executor, summed over the episodes
        totals = {
            key: sum(run[key] for run in runs)
            for key in ("ticks", "requests", "waits", "wait_s", "dropped", "merged", "late_ticks")
        }
        totals["wait_fraction"] = totals["waits"] / max(1.0, totals["ticks"])
        totals["mean_wait_ms"] = 1e3 * totals["wait_s"] / max(1.0, totals["waits"])
        summary["executor"] = totals
    return summary


def format_within(block: dict[str, Any]) -> str:
    """The ``successes_within`` counts of a summary block as text for a one-line report."""
    return "".join(f"  within {n} steps {k}" for n, k in block.get("successes_within", {}).items())
