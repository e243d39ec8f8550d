"""A policy called directly in this process, as a rollout actor (no server): quick evaluations and DAgger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fm_agent_client.masks import FutureMaskSpec

from ..model import Observation, VLAPolicy, step_generator
from ..model.history import EpisodeHistory


class InProcessActor:
    """A :class:`~fm_agent.model.VLAPolicy` called directly, under one mask spec."""

    def __init__(self, policy: VLAPolicy, spec: FutureMaskSpec, temperature: float | None = None) -> None:
        self.policy, self.spec = policy, spec
        self.temperature = policy.config.temperature if temperature is None else temperature
        self.frames = EpisodeHistory(policy.config.history)
        self.instruction = ""
        self.seed, self.steps = 0, 0

    def start_episode(self, instruction: str, seed: int = 0) -> None:
        self.frames.clear()
        self.instruction = instruction
        self.seed, self.steps = seed, 0

    def act(self, observation: dict[str, Any]) -> tuple[np.ndarray, dict[str, float]]:
        frame = self.policy.check_frame(observation)  # fitted on arrival, as the server does
        proprio = observation.get("proprio") if self.policy.config.proprio_dim else None
        generator = step_generator(self.seed, self.steps) if self.temperature > 0 else None
        inputs = Observation(self.frames.with_frame(frame), self.instruction, proprio, self.temperature, generator,
                             self.frames.features_with_new_frame())  # fmt: skip
        result = self.policy.predict([inputs], self.spec)[0]
        self.frames.append(frame, result.frame_features)
        self.steps += 1
        return result.actions, result.timings_ms

    def end_episode(self) -> None:
        self.frames.clear()


def load_actor(
    checkpoint: str | Path, temperature: float | None = None, mask: str | None = None, threads: int = 1
) -> InProcessActor:
    """An in-process actor for a checkpoint folder, under its default mask unless ``mask`` is given.
    Module-level, so ``functools.partial(load_actor, folder)`` can travel to worker processes that
    build their own (DAgger collection)."""
    torch.set_num_threads(threads)
    policy = VLAPolicy.from_pretrained(checkpoint)
    return InProcessActor(policy, FutureMaskSpec.parse(mask or policy.config.default_mask), temperature)
