"""Tiny LIBERO-shaped policies, observations and recorded-looking episodes, for the action-head and
action-encoding tests (random weights; nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import torch

from fm_agent.data.episodes import EpisodeArrays
from fm_agent.model import ActionTokenizer, BackboneShape, Observation, VLAConfig, VLAPolicy

TINY = BackboneShape(
    hidden=32,
    layers=2,
    heads=4,
    kv_heads=2,
    intermediate=64,
    vision_hidden=16,
    vision_layers=1,
    vision_heads=2,
    patch_size=8,
)
INSTRUCTION = "pick up the black bowl and place it on the plate"
CAMERAS = ["agentview", "wrist"]


def tiny_libero_policy(actions: ActionTokenizer, head: str = "autoregressive", seed: int = 0) -> VLAPolicy:
    """Two 16-pixel cameras, two frames, 8 proprio dims, the given action tokenizer and head."""
    config = VLAConfig(
        env_family="libero",
        cameras=CAMERAS,
        image_size=16,
        history=2,
        action_tokenizer=actions.to_dict(),
        proprio_dim=8,
        proprio_bins=8,
        proprio_low=[-1.0] * 8,
        proprio_high=[1.0] * 8,
        backbone=TINY,
        action_head=head,
    )
    policy = VLAPolicy.create(config, [INSTRUCTION], seed=seed)
    with torch.no_grad():  # sharper random weights, so that masks and inputs visibly change the actions
        for parameter in policy.model.model.language_model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(8.0)
    return policy


def observation(seed: int = 0, proprio: float = 0.1) -> Observation:
    rng = np.random.default_rng(seed)
    frames = [{c: rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for c in CAMERAS} for _ in range(2)]
    return Observation(frames, INSTRUCTION, np.full(8, proprio))


def episodes(n: int = 3, steps: int = 12, seed: int = 0, smooth: bool = False) -> list[EpisodeArrays]:
    """``smooth``: actions that drift slowly (a random walk), as a demonstration's do, instead of
    independent uniform draws."""
    rng = np.random.default_rng(seed)

    def actions() -> np.ndarray:
        if smooth:
            return np.clip(np.cumsum(rng.normal(0, 0.1, (steps, 7)), axis=0), -1, 1).astype(np.float32)
        return rng.uniform(-1, 1, (steps, 7)).astype(np.float32)

    return [
        EpisodeArrays(
            INSTRUCTION,
            {c: rng.integers(0, 256, (steps, 16, 16, 3), dtype=np.uint8) for c in CAMERAS},
            rng.uniform(-1, 1, (steps, 8)).astype(np.float32),
            actions(),
            {},
        )
        for _ in range(n)
    ]
