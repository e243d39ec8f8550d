"""One control step of each given checkpoint, against one forward of the first one's prompt.

``fm-agent profile --step`` times random-weight policies of one checkpoint's shape per chunk and head;
this times trained checkpoints themselves (e.g. an autoregressive and a parallel head trained on the
same data), loaded as the server loads them, on one steady-state observation each (every history
frame but the newest already encoded). Calls are interleaved across checkpoints, one intra-op thread
by default; medians are printed and, with --out, written as JSON.

With ``--data`` each repetition's observation is a different recorded one (all checkpoints see the same
one), not random frames: a FAST policy decodes as many tokens as the chunk it predicts needs, so its
step is only honest on what it meets when deployed; tokens per step are reported as a mean.

    python launch/time_checkpoints.py runs/libero_head_autoregressive runs/libero_head_parallel --repetitions 30
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from fm_agent.attention import FutureMaskSpec
from fm_agent.data.episodes import EpisodeArrays, load_episodes
from fm_agent.model import Observation, VLAPolicy
from fm_agent.profiling.step import time_step_parts
from fm_agent.training.loop import recorded_observation


def recorded_observations(episodes: list[EpisodeArrays], policy: VLAPolicy, count: int) -> list[Observation]:
    """``count`` observations drawn (seeded) from recorded episodes, as ``policy`` would be sent them."""
    rng = np.random.default_rng(0)
    stride, picked = policy.config.history_stride, []
    for _ in range(count):
        episode = episodes[rng.integers(len(episodes))]
        step = int(rng.integers(len(episode.actions))) // stride * stride
        picked.append(recorded_observation(policy.config, episode, step))
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoints", type=Path, nargs="+", help="policy folders; the first one's prompt is the forward"
    )
    parser.add_argument("--mask", default="causal", help="mask label the steps run under")
    parser.add_argument("--repetitions", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the medians")
    parser.add_argument("--data", type=Path, default=None, help="recorded episodes to take the observations from")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policies = [VLAPolicy.from_pretrained(folder) for folder in args.checkpoints]
    reference, spec = policies[0], FutureMaskSpec.parse(args.mask)
    for folder, policy in zip(args.checkpoints, policies):
        if policy.config.cameras != reference.config.cameras or policy.config.image_size != reference.config.image_size:
            parser.error(f"{folder}: other cameras or image size than the first")
        time_step_parts(policy, reference, spec)  # warm-up
    observed: list[list[Observation | None]] = [[None] * args.repetitions for _ in policies]
    if args.data is not None:
        episodes = load_episodes(args.data, reference.config.cameras)
        observed = [recorded_observations(episodes, policy, args.repetitions) for policy in policies]
    samples: list[list[dict[str, float]]] = [[] for _ in policies]
    for rep in range(args.repetitions):
        for runs, policy, observations in zip(samples, policies, observed):
            runs.append(time_step_parts(policy, reference, spec, observations[rep]))
    rows = []
    for folder, policy, runs in zip(args.checkpoints, policies, samples):
        median = {name: float(np.median([r[name] for r in runs])) for name in runs[0] if name != "tokens"}
        actions = policy.actions
        rows.append(
            {
                "checkpoint": str(folder),
                "action_head": policy.config.action_head,
                "action_encoding": actions.encoding,
                "tokens_per_call": actions.tokens_per_call,
                "tokens_mean": float(np.mean([r["tokens"] for r in runs])),
                **median,
                "step_over_forward": median["step_ms"] / median["forward_ms"],
            }
        )
    print(
        f"{'checkpoint':40} {'head':15} {'enc':>4} {'tokens':>6} {'step ms':>8} {'prefill':>8} {'decode':>7} {'forward':>8} {'step/fwd':>8}"
    )
    for r in rows:
        print(
            f"{r['checkpoint']:40} {r['action_head']:15} {r['action_encoding']:>4} {r['tokens_mean']:6.1f} {r['step_ms']:8.1f} "
            f"{r['prefill_ms']:8.1f} {r['decode_ms']:7.1f} {r['forward_ms']:8.1f} {r['step_over_forward']:8.2f}"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "mask": args.mask,
            "threads": args.threads,
            "repetitions": args.repetitions,
            "observations": str(args.data) if args.data is not None else "random frames",
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "rows": rows,
        }
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
