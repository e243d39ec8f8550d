"""``fm-agent train --action-encoding fast`` end to end: episodes in the recorded format in, a FAST policy
out that loads (with its validation step) and acts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from paths import REPO
from policy_cases import CAMERAS, INSTRUCTION, observation

from envs.recording import Episode, episode_path, write_episode
from fm_agent.cli import main
from fm_agent.model import VLAPolicy


def write_demos(folder, episodes: int = 3, steps: int = 20) -> None:
    """LIBERO-shaped episodes (two 16-pixel cameras, 8 proprio dims, 7-dim actions of slow motion)."""
    rng = np.random.default_rng(0)
    for index in range(episodes):
        actions = np.clip(np.cumsum(rng.normal(0, 0.05, (steps, 7)), axis=0), -1, 1).astype(np.float32)
        observations = {c: rng.integers(0, 256, (steps, 16, 16, 3), dtype=np.uint8) for c in CAMERAS}
        observations["proprio"] = rng.uniform(-1, 1, (steps, 8)).astype(np.float32)
        episode = Episode("libero:libero_spatial/0", index, index, index, INSTRUCTION, observations, actions,
                          np.zeros(steps), True, "synthetic")  # fmt: skip
        write_episode(episode_path(folder, episode.env, index), episode)


def test_train_with_the_fast_encoding_gives_a_policy_that_loads_and_acts(tmp_path) -> None:
    write_demos(tmp_path / "demos")
    out = tmp_path / "ckpt"
    argv = ["train", "--preset", "libero", "--data", str(tmp_path / "demos"), "--out", str(out), "--image-size", "16"]
    argv += ["--patch", "8", "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--steps", "3"]
    argv += ["--batch-size", "4", "--validate-every", "3", "--val-fraction", "0.34", "--threads", "1", "--fresh"]
    assert main([*argv, "--action-encoding", "fast", "--fast-vocab", "64"]) == 0
    policy = VLAPolicy.from_pretrained(out)
    actions = policy.actions
    assert actions.encoding == "fast" and actions.variable_length and actions.bins <= 64
    assert policy.config.training["val_loss"] is not None
    result = policy.predict([observation()])[0]
    assert result.actions.shape == (4, 7) and 1 <= len(result.tokens) <= 28
    assert policy.config.training["validation"] == {"val_fraction": 0.34, "seed": 0, "episodes": 1}

    # the action-error measurement finds the same held-out episode and decodes the way the server does
    report = tmp_path / "error.json"
    command = [sys.executable, str(REPO / "launch" / "action_error.py"), str(out), "--data", str(tmp_path / "demos")]
    done = subprocess.run([*command, "--out", str(report)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(report.read_text())["rows"]
    assert (
        row["action_encoding"] == "fast" and row["chunks"] == 20
    )  # one per step of the held-out episode (rendered every step)
    assert 0 < row["arm_mean_abs_error"] < 2 and 0 <= row["gripper_sign_wrong"] <= 1 and 1 <= row["tokens_mean"] <= 28
