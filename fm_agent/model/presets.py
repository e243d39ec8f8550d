"""Prompt and action conventions per environment family: what a new policy of that family looks like.

Data, not code: ``fm-agent train --preset NAME`` starts from one of these and lets flags override
the shape fields; a policy's own ``fm_agent_policy.json`` records what it was built with.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """The environment-given parts of a :class:`~fm_agent.model.VLAConfig`."""

    cameras: tuple[str, ...]
    image_size: int  # pixels per side the policy reads
    history: int  # frames per camera in the prompt (K)
    chunk: int  # actions per policy call
    patch: int  # vision patch size: (image_size / patch)^2 tokens per image
    proprio: bool  # whether the prompt carries the robot's proprioception
    discrete_actions: int = 0  # > 0: that many discrete actions (BabyAI); 0: binned continuous (LIBERO)


PRESETS: dict[str, Preset] = {
    "babyai": Preset(cameras=("image",), image_size=56, history=4, chunk=1, patch=8, proprio=False, discrete_actions=7),
    "libero": Preset(cameras=("agentview", "wrist"), image_size=64, history=2, chunk=4, patch=16, proprio=True),
}
