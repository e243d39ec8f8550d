"""Behaviour-cloning samples from recorded episodes (the HDF5 layout of ``envs.recording``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.recording import read_episode


@dataclass
class EpisodeArrays:
    instruction: str
    frames: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8
    proprio: np.ndarray | None  # (T, P) float32
    actions: np.ndarray  # (T, D) float32 or (T,) int64
    metadata: dict


def load_episodes(folder: Path, cameras: Sequence[str], limit: int | None = None) -> list[EpisodeArrays]:
    """Every episode file under ``folder`` (sorted, so splits are reproducible)."""
    files = sorted(Path(folder).rglob("episode_*.h5"))[:limit]
    if not files:
        raise FileNotFoundError(
            f"no episode_*.h5 files under {folder}: record demonstrations first (launch/record_demos.py)"
        )
    episodes = []
    for path in files:
        e = read_episode(path)
        missing = [c for c in cameras if c not in e.observations]
        if missing:
            raise ValueError(f"{path} lacks cameras {missing}; it has {sorted(e.observations)}")
        episodes.append(
            EpisodeArrays(
                e.instruction,
                {c: e.observations[c] for c in cameras},
                e.observations.get("proprio"),
                e.actions,
                e.metadata,
            )
        )
    return episodes


@dataclass(frozen=True)
class Sample:
    episode: int
    step: int


def rendered_every(episode: EpisodeArrays) -> int:
    """1, or N for an episode recorded with fresh images only at steps 0, N, 2N, ... (``render_every``)."""
    return int(episode.metadata.get("render_every", 1))


def all_samples(episodes: Sequence[EpisodeArrays], history_stride: int = 1) -> list[Sample]:
    """Every step as a sample, except in episodes rendered every N steps: only their rendered steps,
    whose history (``history_stride`` apart) then lies on rendered steps too; the others hold stale
    images."""
    samples = []
    for i, e in enumerate(episodes):
        every = rendered_every(e)
        if every > 1 and history_stride % every:
            raise ValueError(
                f"an episode rendered every {every} steps needs a history stride that is a multiple of it, "
                f"got {history_stride}"
            )
        samples += [Sample(i, t) for t in range(0, len(e.actions), every)]
    return samples


def history_frames(episode: EpisodeArrays, step: int, history: int, stride: int = 1) -> list[dict[str, np.ndarray]]:
    """The ``history`` frames ending at ``step``, ``stride`` steps apart, oldest first (frame 0 repeated
    before the start, as the server fills a new episode's history)."""
    steps = [max(0, step - stride * back) for back in range(history - 1, -1, -1)]
    return [{c: frames[s] for c, frames in episode.frames.items()} for s in steps]


def action_chunk(episode: EpisodeArrays, step: int, chunk: int) -> np.ndarray:
    """Actions ``step .. step + chunk - 1``, the last one repeated past the end of the episode."""
    index = np.minimum(np.arange(step, step + chunk), len(episode.actions) - 1)
    return episode.actions[index]
