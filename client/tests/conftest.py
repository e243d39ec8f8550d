"""The client's tests run without torch. The round trip needs a real server: an interpreter that has
``fm-agent`` installed, from ``FM_AGENT_SERVER_PYTHON`` (CI sets it to the main environment's) or
this one when it has the server too (the main test suite)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "checkpoints" / "libero_spatial"  # the embedded default policy


def server_python() -> str | None:
    given = os.environ.get("FM_AGENT_SERVER_PYTHON")
    if given:
        return given
    return sys.executable if importlib.util.find_spec("fm_agent") is not None else None


@pytest.fixture(scope="session")
def server_address(tmp_path_factory) -> Iterator[str]:
    """``fm-agent serve`` on a free loopback port, found through its ready file."""
    python = server_python()
    if python is None:
        pytest.skip("no interpreter with fm-agent installed: set FM_AGENT_SERVER_PYTHON")
    ready = tmp_path_factory.mktemp("server") / "ready.json"
    process = subprocess.Popen(
        [
            python,
            "-m",
            "fm_agent.cli",
            "serve",
            "--checkpoint",
            str(CHECKPOINT),
            "--port",
            "0",
            "--threads",
            "1",
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            if process.poll() is not None:
                raise RuntimeError(f"the server exited at start:\n{process.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the server was not ready within 180 s")
            time.sleep(0.05)
        yield json.loads(ready.read_text())["address"]
    finally:
        process.terminate()
        process.wait(30)
