"""A policy behind the gRPC server as a rollout actor."""

from __future__ import annotations

from typing import Any

import numpy as np

from fm_agent_client import FutureMaskSpec, PolicyClient, StatelessEpisode


class GrpcActor:
    """Sends each observation to the server, which keeps the frame history; ``stateless``: the actor
    keeps it and sends it every step, so any server replica can answer (``StatelessEpisode``)."""

    def __init__(
        self, client: PolicyClient, spec: FutureMaskSpec, temperature: float | None = None, stateless: bool = False
    ) -> None:
        self.client, self.spec, self.stateless = client, spec, stateless
        self.temperature = temperature  # None: the served policy's default
        info = client.info()
        self.cameras = [c.name for c in info.cameras]
        self.proprio_dim, self.history = info.proprio_dim, info.history
        self.episode_id: str | None = None
        self.episode: StatelessEpisode | None = None

    def start_episode(self, instruction: str, seed: int = 0) -> None:
        if self.stateless:
            self.episode = StatelessEpisode(
                self.client, instruction, self.spec, seed, self.temperature, history=self.history
            )
            return
        self.episode_id = self.client.start_episode(
            instruction, mask=self.spec, seed=seed, temperature=self.temperature
        )

    def act(self, observation: dict[str, Any]) -> tuple[np.ndarray, dict[str, float]]:
        images = {c: observation[c] for c in self.cameras}
        proprio = observation.get("proprio") if self.proprio_dim else None
        if self.episode is not None:
            result = self.episode.act(images, proprio)
        elif self.episode_id is not None:
            result = self.client.act(self.episode_id, images, proprio)
        else:
            raise RuntimeError("act() before start_episode()")
        latency = {k: v for k, v in result.latency.items() if k != "batch_size"}
        return result.actions, latency

    def end_episode(self) -> None:
        self.episode = None
        if self.episode_id is not None:
            try:
                self.client.end_episode(self.episode_id)
            except Exception:  # the server may have restarted: the episode is gone anyway
                pass
            self.episode_id = None
