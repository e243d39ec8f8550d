"""A real server in a subprocess on a free loopback port, with a tiny policy checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

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


class ServerProcess:
    def __init__(self, checkpoint: Path, *args: str, port: int = 0) -> None:
        command = [sys.executable, "-m", "fm_agent.cli", "serve", "--checkpoint", str(checkpoint),
                   "--port", str(port), "--threads", "1", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                raise RuntimeError("server exited:\n" + "".join(self.lines))
            self.lines.append(line)
            match = re.search(r"serving .* on 127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self.address = f"127.0.0.1:{self.port}"
                return
        raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.lines += self.process.stdout.readlines()
        return code


def frame(seed: int, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in ("agentview", "wrist")}
