"""Live episodes: a bounded frame history each, a cap on how many, an idle timeout.

An episode holds at most ``history`` frames, each fitted to the model's image size when it arrived,
so its memory is ``history * cameras * S * S * 3`` bytes whatever clients send, and the store holds
at most ``max_episodes`` of them.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from dataclasses import dataclass, field

import grpc

from ..attention import FutureMaskSpec
from ..model.history import EpisodeHistory
from .errors import RequestError
from .limits import shorten


@dataclass
class Episode:
    id: str
    instruction: str
    spec: FutureMaskSpec
    history: EpisodeHistory  # of {camera: (S, S, 3) uint8}, fitted on arrival, at most the model's history
    seed: int = 0  # step i samples from step_generator(seed, i): refused or cancelled calls shift nothing
    temperature: float = 0.0  # action sampling; 0 = greedy
    steps: int = 0
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one step at a time per episode


class EpisodeStore:
    def __init__(self, history: int, max_episodes: int = 256, idle_timeout_s: float = 300.0) -> None:
        self.history, self.max_episodes, self.idle_timeout_s = history, max_episodes, idle_timeout_s
        self._episodes: dict[str, Episode] = {}

    def __len__(self) -> int:
        return len(self._episodes)

    def start(self, instruction: str, spec: FutureMaskSpec, seed: int = 0, temperature: float = 0.0) -> Episode:
        """A new episode; the caller evicts idle ones first (and logs them)."""
        if len(self._episodes) >= self.max_episodes:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.max_episodes} episodes are live; end one (EndEpisode) or wait for the "
                f"{self.idle_timeout_s:.0f} s idle timeout",
            )
        seed = seed or secrets.randbits(63)
        episode = Episode(uuid.uuid4().hex, instruction, spec, EpisodeHistory(self.history), seed, temperature)
        self._episodes[episode.id] = episode
        return episode

    def get(self, episode_id: str) -> Episode:
        episode = self._episodes.get(episode_id)
        if episode is None:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown episode {shorten(episode_id)} (never started, ended, evicted after "
                f"{self.idle_timeout_s:.0f} s idle, or started on another server: behind a load balancer, "
                "run episodes stateless with ActStateless)",
            )
        episode.last_used = time.monotonic()
        return episode

    def end(self, episode_id: str) -> Episode:
        episode = self.get(episode_id)
        del self._episodes[episode_id]
        return episode

    def evict_idle(self) -> list[str]:
        now = time.monotonic()
        stale = [
            e.id for e in self._episodes.values() if now - e.last_used > self.idle_timeout_s and not e.lock.locked()
        ]
        for episode_id in stale:
            del self._episodes[episode_id]
        return stale
