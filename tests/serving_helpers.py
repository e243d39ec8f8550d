"""A real server in a subprocess on a free loopback port (``LocalServer``), with a tiny policy checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fm_agent.evaluation.grpc_actor import LocalServer
from fm_agent.model import ActionTokenizer, BackboneShape, VLAConfig, VLAPolicy

TINY = BackboneShape(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, vision_hidden=16,
                     vision_layers=1, vision_heads=2, patch_size=8)
INSTRUCTION = "pick up the black bowl and place it on the plate"


def tiny_checkpoint(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    tokenizer = ActionTokenizer.fit(rng.uniform(-1, 1, (500, 7)), bins=32, chunk=2)
    config = VLAConfig(env_family="libero", cameras=["agentview", "wrist"], image_size=16, history=2,
                       action_tokenizer=tokenizer.to_dict(), proprio_dim=8, proprio_bins=8,
                       proprio_low=[-1.0] * 8, proprio_high=[1.0] * 8, backbone=TINY)
    policy = VLAPolicy.create(config, [INSTRUCTION], seed=0)
    with torch.no_grad():  # sharper random weights, so that different masks lead to different actions
        for parameter in policy.model.model.language_model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(8.0)
    policy.save_pretrained(folder)
    return folder


def start_server(checkpoint: Path, *args: str, port: int = 0) -> LocalServer:
    """A started server (1 torch thread) with the given ``fm-agent serve`` options."""
    server = LocalServer(checkpoint, args, threads=1, port=port)
    server.start(timeout=120)
    return server


def frame(seed: int, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in ("agentview", "wrist")}
