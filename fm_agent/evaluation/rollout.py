"""Episodes of a policy in an environment, the policy called through a small ``Actor`` interface.

An actor sees one observation per control step and returns a chunk of actions; the loop executes
the chunk open-loop (as OpenVLA-OFT and openpi do) and asks again. The in-process actor keeps the
frame history itself; the gRPC actor lets the server keep it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

class Actor(Protocol):
    def start_episode(self, instruction: str, seed: int = 0) -> None:
        """``seed`` seeds the policy's action sampling, so a sampled episode can be replayed."""

    def act(self, observation: dict[str, Any]) -> tuple[np.ndarray, dict[str, float]]:
        """Returns (actions (chunk, ...) , timings in ms)."""

    def end_episode(self) -> None: ...


class InProcessActor:
    """A :class:`~fm_agent.model.VLAPolicy` called directly, under one mask spec."""

    def __init__(self, policy, spec, temperature: float | None = None) -> None:
        self.policy, self.spec = policy, spec
        self.temperature = policy.config.temperature if temperature is None else temperature
        self.frames: deque = deque(maxlen=policy.config.history)
        self.instruction = ""
        self.seed, self.steps = 0, 0

    def start_episode(self, instruction: str, seed: int = 0) -> None:
        self.frames.clear()
        self.instruction = instruction
        self.seed, self.steps = seed, 0

    def act(self, observation: dict[str, Any]) -> tuple[np.ndarray, dict[str, float]]:
        from ..model import Observation, step_generator

        self.frames.append(self.policy.check_frame(observation))  # fitted on arrival, as the server does
        proprio = observation.get("proprio") if self.policy.config.proprio_dim else None
        generator = step_generator(self.seed, self.steps) if self.temperature > 0 else None
        observation = Observation(list(self.frames), self.instruction, proprio, self.temperature, generator)
        result = self.policy.predict([observation], self.spec)[0]
        self.steps += 1
        return result.actions, result.timings_ms

    def end_episode(self) -> None:
        self.frames.clear()


def load_actor(checkpoint: str | Path, temperature: float | None = None, mask: str | None = None,
               threads: int = 1) -> InProcessActor:
    """An in-process actor for a checkpoint folder, under its default mask unless ``mask`` is given.
    Module-level, so ``functools.partial(load_actor, folder)`` can travel to worker processes that
    build their own (DAgger collection)."""
    import torch

    from ..attention import FutureMaskSpec
    from ..model import VLAPolicy

    torch.set_num_threads(threads)
    policy = VLAPolicy.from_pretrained(checkpoint)
    return InProcessActor(policy, FutureMaskSpec.parse(mask or policy.config.default_mask), temperature)


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


def run_episode(env, actor: Actor, env_name: str, episode: int, seed: int, options: dict | None = None,
                max_steps: int | None = None) -> EpisodeResult:
    obs, info = env.reset(seed=seed, options=options)
    actor.start_episode(info["instruction"], seed)
    result = EpisodeResult(env_name, episode, seed, False, 0)
    limit = max_steps or env.max_steps
    blind_steps = bool(getattr(env, "supports_blind_steps", False))
    try:
        done = False
        while not done and result.steps < limit:
            start = time.perf_counter()
            actions, timings = actor.act(obs)
            result.policy_ms.append((time.perf_counter() - start) * 1e3)
            for key, value in timings.items():
                result.server_ms.setdefault(key, []).append(value)
            chunk = np.asarray(actions).reshape(len(actions), -1) if np.ndim(actions) > 1 else actions
            for index, action in enumerate(chunk):
                start = time.perf_counter()
                action = action if np.ndim(action) else int(action)
                if blind_steps and index < len(chunk) - 1:  # the policy will not read this step's images
                    obs, _, terminated, truncated, info = env.step(action, render=False)
                else:
                    obs, _, terminated, truncated, info = env.step(action)
                result.env_ms.append((time.perf_counter() - start) * 1e3)
                result.steps += 1
                done = terminated or truncated or result.steps >= limit
                if done:
                    break
        result.success = bool(info.get("success", False))
        result.metadata = {k: info[k] for k in ("has_location_phrase", "num_subgoals", "sequence", "init_state") if k in info}
    finally:
        actor.end_episode()
    return result


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
    return {"mean": float(array.mean()), "p50": float(np.percentile(array, 50)),
            "p95": float(np.percentile(array, 95)), "p99": float(np.percentile(array, 99))}


def summarise(results: Sequence[EpisodeResult], split_keys: Sequence[str] = (),
              within: Sequence[int] = ()) -> dict[str, Any]:
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
        return {"episodes": len(rs), "successes": wins, "success_rate": wins / max(1, len(rs)), "ci95": [low, high],
                "steps_to_success": percentiles([r.steps for r in rs if r.success]),
                **({"successes_within": {str(n): sum(r.success and r.steps <= n for r in rs) for n in within}}
                   if within else {})}

    ok = [r for r in results if r.error is None]
    summary = {"overall": block(ok), "errors": len(results) - len(ok),
               "per_env": {e: block([r for r in ok if r.env == e]) for e in sorted({r.env for r in ok})}}
    for key in split_keys:
        values = sorted({r.metadata.get(key) for r in ok}, key=str)
        summary[f"by_{key}"] = {str(v): block([r for r in ok if r.metadata.get(key) == v]) for v in values}
    summary["latency_ms"] = {"policy_round_trip": percentiles([x for r in ok for x in r.policy_ms]),
                             "env_step": percentiles([x for r in ok for x in r.env_ms])}
    for key in sorted({k for r in ok for k in r.server_ms}):
        summary["latency_ms"][key] = percentiles([x for r in ok for x in r.server_ms.get(key, [])])
    return summary


def format_within(block: dict[str, Any]) -> str:
    """The ``successes_within`` counts of a summary block as text for a one-line report."""
    return "".join(f"  within {n} steps {k}" for n, k in block.get("successes_within", {}).items())
