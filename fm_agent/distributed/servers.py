"""Policy servers as Ray actors: a run on a cluster starts its own servers where the cluster has room.

Each actor is one ``fm-agent serve`` (the same policy loading and server settings, the same health
and reflection services) listening on its node's address, so simulator workers on any node reach
it. An actor asks Ray for the CPUs its torch threads use, and for one GPU when it serves on ``cuda``
(Ray then shows it only that GPU, so ``cuda`` is the one it was given). The server dies with its
actor, so a killed run leaves no stray server behind.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runners import import_ray


class PolicyServerActor:
    """Runs a PolicyServer on its own event loop thread inside the actor process."""

    def __init__(
        self, checkpoint: str, threads: int, max_batch: int = 8, device: str = "cpu", static_decode: bool = False
    ) -> None:
        self.checkpoint, self.threads, self.max_batch = checkpoint, threads, max_batch
        self.device, self.static_decode = device, static_decode
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None

    def start(self) -> str:
        """Loads the policy, starts serving on a free port of this node; returns ``host:port``."""
        from ..serving.config import ServeConfig  # noqa: PLC0415  (imported in the actor process, not the driver)
        from ..serving.jobs import load_served_policy, server_settings  # noqa: PLC0415
        from ..serving.server import PolicyServer  # noqa: PLC0415

        host = import_ray().util.get_node_ip_address()
        config = ServeConfig(
            checkpoint=Path(self.checkpoint),
            host=host,
            port=0,
            threads=self.threads,
            max_batch=self.max_batch,
            device=self.device,
            static_decode=self.static_decode,
        )
        config.validate()
        policy = load_served_policy(config)
        settings = server_settings(config, policy)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="fm-agent-server-loop", daemon=True).start()

        async def start() -> int:
            self._server = PolicyServer(policy, settings)  # grpc.aio objects belong to the loop that makes them
            return await self._server.start()

        port = asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=120)
        return f"{host}:{port}"

    def stop(self) -> None:
        if self._server is not None and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(timeout=60)
            self._server = None


@dataclass
class RayServers:
    """``count`` server actors of ``threads`` CPUs (and, on ``cuda``, one GPU) each."""

    checkpoint: Path
    count: int = 1
    threads: int = 1
    max_batch: int = 8
    device: str = "cpu"
    static_decode: bool = False

    def __post_init__(self) -> None:
        self.actors: list[Any] = []
        self.addresses: list[str] = []

    def start(self) -> list[str]:
        ray = import_ray()
        gpus = 0 if self.device == "cpu" else 1
        remote = ray.remote(PolicyServerActor).options(num_cpus=self.threads, num_gpus=gpus, max_restarts=0)
        checkpoint = str(Path(self.checkpoint).resolve())  # the same path on every node (a shared or copied tree)
        self.actors = [
            remote.remote(checkpoint, self.threads, self.max_batch, self.device, self.static_decode)
            for _ in range(self.count)
        ]
        self.addresses = ray.get([actor.start.remote() for actor in self.actors])
        return self.addresses

    def stop(self) -> None:
        ray = import_ray()
        for actor in self.actors:
            try:
                ray.get(actor.stop.remote(), timeout=60)
            except Exception:  # noqa: BLE001  (an actor that died took its server with it)
                pass
            ray.kill(actor, no_restart=True)
        self.actors, self.addresses = [], []
