"""A policy behind the gRPC server as a rollout actor."""

from __future__ import annotations

from typing import Any

import numpy as np

from fm_agent_client import FutureMaskSpec, PolicyClient


class GrpcActor:
    """Sends each observation to the server; the server keeps the frame history."""

    def __init__(self, client: PolicyClient, spec: FutureMaskSpec, temperature: float | None = None) -> None:
        self.client, self.spec = client, spec
        self.temperature = temperature  # None: the served policy's default
        info = client.info()
        self.cameras = [c.name for c in info.cameras]
        self.proprio_dim = info.proprio_dim
        self.episode_id: str | None = None

    def start_episode(self, instruction: str, seed: int = 0) -> None:
        self.episode_id = self.client.start_episode(
            instruction, mask=self.spec, seed=seed, temperature=self.temperature
        )

    def act(self, observation: dict[str, Any]) -> tuple[np.ndarray, dict[str, float]]:
        if self.episode_id is None:
            raise RuntimeError("act() before start_episode()")
        images = {c: observation[c] for c in self.cameras}
        proprio = observation.get("proprio") if self.proprio_dim else None
        result = self.client.act(self.episode_id, images, proprio)
        latency = {k: v for k, v in result.latency.items() if k != "batch_size"}
        return result.actions, latency

    def end_episode(self) -> None:
        if self.episode_id is not None:
            try:
                self.client.end_episode(self.episode_id)
            except Exception:  # the server may have restarted: the episode is gone anyway
                pass
            self.episode_id = None
