"""Two decoding alternatives for an autoregressive policy on the CPU, measured, neither adopted (docs/latency.md).

1. ``--timing``: decode ms per control step of the exact fast step, the compiled step
   (``--compile-decode``), the static-cache step (``StaticCacheDecoder``, eager on a CPU) and the
   static-cache step compiled with fixed shapes; interleaved rounds, 1 thread, medians.
2. ``--jacobi DATA``: how many parallel (Jacobi) iterations greedy decoding of a chunk takes on
   recorded observations. Each iteration feeds the whole guessed chunk in one forward and keeps every
   position's greedy token; the fixed point is the greedy chunk (checked against ``predict``), reached
   after at most as many forwards as the chunk has tokens. Guesses: all the lowest action token, the
   previous step's chunk, or the previous chunk's last action repeated.

    python launch/decode_alternatives.py checkpoints/libero_spatial --timing
    python launch/decode_alternatives.py checkpoints/libero_spatial --jacobi runs/heads_demos --episodes 6
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from fm_agent.attention import FutureMaskSpec
from fm_agent.attention.static_decode import StaticCacheDecoder
from fm_agent.data.episodes import load_episodes
from fm_agent.model import VLAPolicy
from fm_agent.profiling.step import time_step_parts
from fm_agent.training.loop import recorded_observation


def timing(checkpoint: Path, rounds: int) -> None:
    paths = {
        "exact fast step": VLAPolicy.from_pretrained(checkpoint),
        "compiled (dynamic shapes)": VLAPolicy.from_pretrained(checkpoint, compile_decode=True),
        "static cache": VLAPolicy.from_pretrained(checkpoint),
        "static cache, compiled (fixed shapes)": VLAPolicy.from_pretrained(checkpoint),
    }
    static = StaticCacheDecoder(paths["static cache"].model)
    paths["static cache"].fast_decoder = static  # type: ignore[assignment]
    compiled = StaticCacheDecoder(paths["static cache, compiled (fixed shapes)"].model)
    compiled._run = torch.compile(compiled._run, dynamic=False, options={"freezing": True, "cpp_wrapper": True})  # type: ignore[method-assign]
    paths["static cache, compiled (fixed shapes)"].fast_decoder = compiled  # type: ignore[assignment]
    reference = VLAPolicy.from_pretrained(checkpoint)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for i in range(rounds + 3):  # 3 warm-up rounds (the fixed-shape compile happens in the first)
        for name, policy in paths.items():
            parts = time_step_parts(policy, reference, FutureMaskSpec())
            if i >= 3:
                times[name].append((parts["decode_ms"], parts["step_ms"] / parts["forward_ms"]))
    for name, values in times.items():
        decode = statistics.median(v[0] for v in values)
        ratio = statistics.median(v[1] for v in values)
        print(f"{name:40} decode {decode:6.2f} ms   step / forward {ratio:5.2f}")


def jacobi_decode(policy: VLAPolicy, inputs: dict[str, torch.Tensor], guess: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Iterate ``guess`` (1, n) to its fixed point; returns (forwards taken, the fixed point)."""
    lo, hi = policy.actions.token_range()
    prompt = inputs["input_ids"]
    forwards = 0
    while True:
        forwards += 1
        logits = policy.model(
            input_ids=torch.cat([prompt, guess[:, :-1]], -1), pixel_values=inputs["pixel_values"]
        ).logits
        new = logits[:, prompt.shape[1] - 1 :, lo:hi].argmax(-1) + lo
        if torch.equal(new, guess):
            return forwards, guess
        guess = new


@torch.no_grad()
def jacobi(checkpoint: Path, data: Path, episodes: int, steps: int) -> None:
    policy = VLAPolicy.from_pretrained(checkpoint)
    config = policy.config
    lo, hi = policy.actions.token_range()
    n = policy.actions.tokens_per_call
    dims = policy.actions.dims
    counts: dict[str, list[int]] = {"lowest token": [], "previous chunk": [], "previous last action": []}
    for episode in load_episodes(data, config.cameras)[:episodes]:
        previous = None
        for step in range(0, len(episode.actions), config.history_stride)[:steps]:
            observation = recorded_observation(config, episode, step)
            want = torch.as_tensor(np.asarray(policy.predict([observation])[0].tokens)).long().view(1, -1)
            inputs = policy.encode([observation])
            guesses = {"lowest token": torch.full((1, n), lo)}
            if previous is not None:
                guesses["previous chunk"] = previous
                guesses["previous last action"] = previous.view(-1, dims)[-1:].repeat(n // dims, 1).view(1, -1)
            for name, guess in guesses.items():
                forwards, fixed_point = jacobi_decode(policy, inputs, guess)
                assert torch.equal(fixed_point, want), "the Jacobi fixed point is not the greedy chunk"
                counts[name].append(forwards)
            previous = want
    for name, values in counts.items():
        print(f"{name:22} forwards per chunk: mean {np.mean(values):.1f}, median {np.median(values):.0f}, "
              f"max {max(values)}, {len(values)} chunks of {n} tokens")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--timing", action="store_true", help="decode ms per step of the four paths")
    parser.add_argument("--rounds", type=int, default=22)
    parser.add_argument("--jacobi", type=Path, default=None, metavar="DATA", help="recorded episodes")
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30, help="chunks per episode, one every history stride")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.timing and args.jacobi is None:
        parser.error("choose --timing, --jacobi DATA or both")
    torch.set_num_threads(args.threads)
    if args.timing:
        timing(args.checkpoint, args.rounds)
    if args.jacobi is not None:
        jacobi(args.checkpoint, args.jacobi, args.episodes, args.steps)


if __name__ == "__main__":
    main()
