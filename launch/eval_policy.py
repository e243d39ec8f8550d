#!/usr/bin/env python
"""Quick in-process evaluation of a checkpoint (no server): success rate and latency per mask.

Example:
  python launch/eval_policy.py --checkpoint checkpoints/babyai_gotoseq --env babyai:BabyAI-GoToSeqS5R2-v0 \
      --episodes 200 --masks causal Mf+merge --out runs/eval_babyai
  python launch/eval_policy.py --random-baseline --env babyai:BabyAI-OpenDoorsOrderN4-v0 --episodes 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--random-baseline", action="store_true",
                        help="act uniformly at random instead of a checkpoint (the floor to read success rates against)")
    parser.add_argument("--env", nargs="+", required=True, help="environment name(s), e.g. libero:libero_spatial/0")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per environment and mask")
    parser.add_argument("--masks", nargs="+", default=["causal"], help="mask labels, e.g. causal Mf/prefill Mf+merge")
    parser.add_argument("--seed", type=int, default=100_000, help="first episode seed (demos used 0..)")
    parser.add_argument("--max-steps", type=int, help="cap on steps per episode (default: the environment's own)")
    parser.add_argument("--success-within", type=int, nargs="+", default=[], metavar="N",
                        help="also count the successes reached within N steps (read off the same episodes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--temperature", type=float, help="action sampling, 0 = greedy (default: the checkpoint's); "
                        "episode i's draws are seeded with its seed")
    parser.add_argument("--out", type=Path, default=Path("runs/eval"))
    parser.add_argument("--image-size", type=int, default=56, help="rendered image size with --random-baseline")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (not args.random_baseline):
        parser.error("give either --checkpoint or --random-baseline")
    os.environ.setdefault("MUJOCO_GL", "egl")

    import torch
    from tqdm import tqdm

    from envs import make_env
    from fm_agent.attention import FutureMaskSpec
    from fm_agent.evaluation.rollout import InProcessActor, RandomActor, format_within, run_episode, summarise
    from fm_agent.model import VLAPolicy

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.random_baseline:
        policy, size, labels = None, args.image_size, ["random"]
        report = {"command": " ".join(sys.argv), "checkpoint": None, "masks": {}}
    else:
        policy = VLAPolicy.from_pretrained(args.checkpoint)
        size, labels = policy.config.image_size, args.masks
        report = {"command": " ".join(sys.argv), "checkpoint": str(args.checkpoint), "masks": {},
                  "temperature": policy.config.temperature if args.temperature is None else args.temperature}
    for label in labels:
        actor = None if policy is None else InProcessActor(policy, FutureMaskSpec.parse(label), args.temperature)
        results = []
        bar = tqdm(total=args.episodes * len(args.env), desc=label, unit="ep")
        for name in args.env:
            env = make_env(name, image_size=size)
            env_actor = actor or RandomActor(env.action_space)
            try:
                for i in range(args.episodes):
                    options = {"init_state": i % 50} if name.startswith("libero:") else None
                    results.append(run_episode(env, env_actor, name, i, args.seed + i, options, args.max_steps))
                    bar.update(1)
                    bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")
            finally:
                env.close()
        bar.close()
        summary = summarise(results, ("has_location_phrase", "num_subgoals", "sequence"), args.success_within)
        report["masks"][label] = summary
        with (args.out / f"episodes_{label.replace('/', '_')}.jsonl").open("w") as f:
            for r in results:
                f.write(json.dumps(asdict(r)) + "\n")
        o = summary["overall"]
        print(f"{label:14s} success {o['successes']}/{o['episodes']} = {100 * o['success_rate']:.1f}% "
              f"(95% CI {100 * o['ci95'][0]:.1f}-{100 * o['ci95'][1]:.1f}); steps to success p50 "
              f"{o['steps_to_success'].get('p50', float('nan')):.0f}; policy p50 "
              f"{summary['latency_ms']['policy_round_trip'].get('p50', float('nan')):.1f} ms" + format_within(o))
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
