"""A real server in a subprocess on a free loopback port (``LocalServer``), with a tiny policy checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from policy_cases import INSTRUCTION, TINY, tiny_libero_policy

from fm_agent.model import ActionTokenizer, VLAPolicy
from fm_agent.serving.local import LocalServer

__all__ = ["INSTRUCTION", "TINY", "InProcessServer", "frame", "start_server", "tiny_checkpoint"]


def tiny_checkpoint(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    tiny_libero_policy(ActionTokenizer.fit(rng.uniform(-1, 1, (500, 7)), bins=32, chunk=2)).save_pretrained(folder)
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
