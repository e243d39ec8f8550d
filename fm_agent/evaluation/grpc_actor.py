"""Policies behind the gRPC server, as rollout actors, and a local server started on demand."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from ..client import PolicyClient


class LocalServer:
    """``fm-agent serve`` in a subprocess on loopback (a free port unless ``port`` is given);
    restartable on the same port after a crash. Its output is read continuously (the last lines are
    kept in ``log``), so a chatty server never blocks on a full pipe."""

    def __init__(self, checkpoint: Path, extra_args: tuple[str, ...] = (), threads: int = 2, port: int = 0) -> None:
        self.checkpoint, self.extra_args, self.threads = Path(checkpoint), extra_args, threads
        self.process: subprocess.Popen | None = None
        self.address = f"127.0.0.1:{port}" if port else ""
        self.log: deque[str] = deque(maxlen=2000)
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 180.0) -> str:
        command = [sys.executable, "-m", "fm_agent.cli", "serve", "--checkpoint", str(self.checkpoint), "--port",
                   str(self._port or 0), "--threads", str(self.threads), *self.extra_args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                raise RuntimeError("the policy server exited at start:\n" + "".join(self.log[-30:]))
            self.log.append(line)
            match = re.search(r"serving .* on ([\d.]+):(\d+)", line)
            if match:
                self.address = f"{match.group(1)}:{match.group(2)}"
                self._reader = threading.Thread(target=self._drain, args=(self.process,), daemon=True)
                self._reader.start()
                return self.address
        raise RuntimeError("the policy server did not start in time")

    def _drain(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.log.append(line)

    @property
    def _port(self) -> int | None:
        return int(self.address.rsplit(":", 1)[1]) if self.address else None  # restart on the same port

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart(self) -> str:
        self.stop()
        return self.start()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal the server and wait for it; returns its exit code (None if it never started)."""
        if self.process is None:
            return None
        if self.alive():
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self._reader is not None:
            self._reader.join(5)
        return code


class GrpcActor:
    """Sends each observation to the server; the server keeps the frame history."""

    def __init__(self, client: PolicyClient, mask: str, merge: bool, decode_mode: str = "prefill",
                 temperature: float | None = None) -> None:
        self.client, self.mask, self.merge, self.decode_mode = client, mask, merge, decode_mode
        self.temperature = temperature  # None: the served policy's default
        info = client.info()
        self.cameras = [c.name for c in info.cameras]
        self.proprio_dim = info.proprio_dim
        self.episode_id: str | None = None

    def start_episode(self, instruction: str, seed: int = 0) -> None:
        self.episode_id = self.client.start_episode(instruction, mask=self.mask, merge=self.merge,
                                                    decode_mode="" if self.merge else self.decode_mode,
                                                    seed=seed, temperature=self.temperature)

    def act(self, observation: dict[str, Any]) -> tuple[np.ndarray, dict[str, float]]:
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
