"""A real server in a subprocess on a free loopback port (``LocalServer``), with a tiny policy checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fm_agent.model import ActionTokenizer, BackboneShape, VLAConfig, VLAPolicy
from fm_agent.serving.local import LocalServer

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


def tiny_checkpoint(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    tokenizer = ActionTokenizer.fit(rng.uniform(-1, 1, (500, 7)), bins=32, chunk=2)
    config = VLAConfig(
        env_family="libero",
        cameras=["agentview", "wrist"],
        image_size=16,
        history=2,
        action_tokenizer=tokenizer.to_dict(),
        proprio_dim=8,
        proprio_bins=8,
        proprio_low=[-1.0] * 8,
        proprio_high=[1.0] * 8,
        backbone=TINY,
    )
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


class InProcessServer:
    """A real ``PolicyServer`` on a loopback port, its event loop in a background thread of the test
    process, so a test can reach into the policy (make the model slow, stall or fail) and the worker."""

    def __init__(self, policy: VLAPolicy, **settings) -> None:
        import asyncio
        import threading

        from fm_agent.serving.server import PolicyServer, ServerSettings

        self.settings = ServerSettings(port=0, **settings)
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

        async def start() -> PolicyServer:
            server = PolicyServer(policy, self.settings)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(60)
        self.servicer = self.server.servicer
        self.address = f"127.0.0.1:{self.server.port}"

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
