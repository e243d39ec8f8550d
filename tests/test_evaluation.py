"""The evaluation loop end to end against a real local policy server."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))

from fm_agent.model import ActionTokenizer, BackboneShape, VLAConfig, VLAPolicy  # noqa: E402
from serving_helpers import TINY, tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def babyai_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("babyai_policy")
    config = VLAConfig(env_family="babyai", cameras=["image"], image_size=16, history=2,
                       action_tokenizer=ActionTokenizer.discrete(7).to_dict(), backbone=TINY)
    VLAPolicy.create(config, ["go to the red ball, then open a door"], seed=0).save_pretrained(folder)
    return folder


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_alfred_eval_end_to_end_and_resume(babyai_checkpoint, tmp_path) -> None:
    import alfred_eval

    argv = ["--checkpoint", str(babyai_checkpoint), "--episodes", "2", "--masks", "causal", "Mf+merge",
            "--max-steps", "6", "--image-size", "16", "--videos", "1", "--workers", "2", "--out", str(tmp_path)]
    assert alfred_eval.main(argv) == 0
    lines = sorted(read_lines(tmp_path / "episodes.jsonl"), key=lambda l: (l["mask"] != "causal", l["episode"]))
    assert len(lines) == 4 and {l["mask"] for l in lines} == {"causal", "Mf+merge"}
    assert all(l["error"] is None and 1 <= l["steps"] <= 6 and len(l["policy_ms"]) == l["steps"] for l in lines)
    assert lines[0]["seed"] == lines[2]["seed"], "a sweep replays the same episodes under every mask"
    summary = json.loads((tmp_path / "summary.json").read_text())
    causal = summary["masks"]["causal"]
    assert causal["overall"]["episodes"] == 2 and "by_num_subgoals" in causal
    assert {"prefill_ms", "queue_ms", "server_ms", "policy_round_trip", "env_step"} <= set(causal["latency_ms"])
    assert summary["versions"]["minigrid"] and "alfred_eval" in summary["command"]
    assert (tmp_path / "summary.png").stat().st_size > 10_000
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 2
    assert alfred_eval.main(argv) == 0  # resume: nothing left to run
    assert len(read_lines(tmp_path / "episodes.jsonl")) == 4


def test_libero_eval_short_episode(tmp_path) -> None:
    import libero_eval

    checkpoint = tiny_checkpoint(tmp_path / "policy")
    argv = ["--checkpoint", str(checkpoint), "--suite", "libero_spatial", "--tasks", "0", "--init-states", "3",
            "--max-steps", "4", "--out", str(tmp_path / "run")]
    assert libero_eval.main(argv) == 0
    (line,) = read_lines(tmp_path / "run" / "episodes.jsonl")
    assert line["error"] is None and line["steps"] == 4 and line["init_state"] == 3 and not line["success"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["masks"]["causal"]["per_env"]["libero:libero_spatial/0"]["episodes"] == 1
    assert summary["versions"]["robosuite"] == "1.4.0" and summary["tasks"] == [0]


def test_a_killed_server_is_restarted_and_the_episode_retried(babyai_checkpoint, tmp_path) -> None:
    from envs import make_env
    from fm_agent.evaluation.grpc_actor import LocalServer
    from fm_agent.evaluation.harness import EpisodeJob, run_jobs

    server = LocalServer(babyai_checkpoint, threads=1)
    address = server.start()
    try:
        job = EpisodeJob("causal", "babyai:BabyAI-GoToLocal-v0", 0, 5, None)
        first = run_jobs([job], address, lambda n: make_env(n, image_size=16), tmp_path, None, 0, 3,
                         server.restart, 1)
        assert first[0]["error"] is None
        server.process.send_signal(signal.SIGKILL)  # the server dies between episodes
        server.process.wait()
        rows = run_jobs([EpisodeJob("causal", "babyai:BabyAI-GoToLocal-v0", 1, 6, None)], address,
                        lambda n: make_env(n, image_size=16), tmp_path, None, 0, 3, server.restart, 1)
        assert rows[0]["error"] is None and rows[0]["steps"] == 3 and server.alive()
        no_retry = LocalServer(babyai_checkpoint, threads=1)
        dead = no_retry.start()
        no_retry.process.send_signal(signal.SIGKILL)
        no_retry.process.wait()
        rows = run_jobs([EpisodeJob("causal", "babyai:BabyAI-GoToLocal-v0", 2, 7, None)], dead,
                        lambda n: make_env(n, image_size=16), tmp_path, None, 0, 3, None, 0)
        assert rows[0]["error"] and not rows[0]["success"], "recorded as an error, not a policy failure"
    finally:
        server.stop()
