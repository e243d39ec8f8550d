"""``fm-agent serve`` in a subprocess on loopback, for evaluations and benchmarks on one machine.

The child says it is ready explicitly: ``--ready-file`` receives ``{"address", "pid"}`` once the port
is bound and health reports SERVING, so a free port (``--port 0``) is learnt without reading logs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited or stayed silent at start; the message carries its last log lines."""


class LocalServer:
    """A restartable local server (the same port after a restart). Its output is read continuously
    (the last lines are kept in ``log``), so a chatty server never blocks on a full pipe."""

    def __init__(self, checkpoint: Path, extra_args: tuple[str, ...] = (), threads: int = 2, port: int = 0) -> None:
        self.checkpoint, self.extra_args, self.threads = Path(checkpoint), extra_args, threads
        self.process: subprocess.Popen | None = None
        self.address = f"127.0.0.1:{port}" if port else ""
        self.openpi_address: str | None = None  # host:port of the openpi websocket endpoint (--openpi-port)
        self.log: deque[str] = deque(maxlen=2000)
        self._reader: threading.Thread | None = None
        self._folder = tempfile.TemporaryDirectory(prefix="fm-agent-server-")

    @property
    def ready_file(self) -> Path:
        return Path(self._folder.name) / "ready.json"

    def start(self, timeout: float = 180.0) -> str:
        """Starts the server and returns its address once it is ready; raises ServerStartError."""
        self.ready_file.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "fm_agent.cli",
            "serve",
            "--checkpoint",
            str(self.checkpoint),
            "--port",
            str(self._port or 0),
            "--threads",
            str(self.threads),
            "--ready-file",
            str(self.ready_file),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._drain, args=(self.process,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                ready = json.loads(self.ready_file.read_text())
                self.address, self.openpi_address = ready["address"], ready.get("openpi")
                return self.address
            if self.process.poll() is not None:
                self._reader.join(5)
                raise ServerStartError(
                    f"the policy server exited at start (code {self.process.returncode}):\n"
                    + "".join(list(self.log)[-30:])
                )
            time.sleep(0.05)
        self.stop()
        raise ServerStartError(
            f"the policy server was not ready within {timeout:.0f} s:\n" + "".join(list(self.log)[-30:])
        )

    def _drain(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
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
