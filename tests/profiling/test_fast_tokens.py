"""launch/fast_tokens.py measures what a FAST-style tokenizer would do to action chunks: check its arithmetic
on trajectories whose answer is known (smooth ones compress, the error stays within a bin)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "fast_tokens.py"


def load_script():
    spec = importlib.util.spec_from_file_location("fast_tokens", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smooth_episodes(count: int, seed: int) -> list[np.ndarray]:
    """LIBERO-like actions: smooth xyz, constant rotation, a gripper that closes once."""
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(count):
        steps = int(rng.integers(60, 120))
        t = np.linspace(0, 1, steps)[:, None]
        xyz = 0.8 * np.sin(2 * np.pi * (t * rng.uniform(0.3, 1.0, 3) + rng.uniform(0, 1, 3)))
        gripper = np.where(t[:, 0] < rng.uniform(0.3, 0.7), -1.0, 1.0)[:, None]
        episodes.append(np.hstack([xyz, np.zeros((steps, 3)), gripper]).astype(np.float32))
    return episodes


def test_smooth_chunks_compress_and_reconstruct_within_a_bin() -> None:
    fast_tokens = load_script()
    row = fast_tokens.measure(smooth_episodes(40, 0), smooth_episodes(10, 1), chunk=8, scale=20.0, vocab=256)
    assert row["binning_tokens_per_chunk"] == 56
    assert row["fast_tokens_per_chunk_mean"] < 56 / 3, row
    assert row["fast_mean_abs_error"] < 2 / 256, "finer than one 256-bin step on [-1, 1]"


def test_executed_chunks_are_the_chunks_a_client_runs() -> None:
    fast_tokens = load_script()
    actions = smooth_episodes(3, 2)
    chunks = fast_tokens.executed_chunks(actions, 4)
    assert chunks.shape[1:] == (4, 7) and len(chunks) == sum(-(-len(a) // 4) for a in actions)
    np.testing.assert_array_equal(chunks[0], actions[0][:4])
    first_episode = -(-len(actions[0]) // 4)  # its chunks come first; the last one ends on its final action
    np.testing.assert_array_equal(chunks[first_episode - 1][-1], actions[0][-1])
