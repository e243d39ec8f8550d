#!/usr/bin/env python
"""Collect DAgger data for a BabyAI policy: the policy acts, BabyAI's bot labels each state it reaches.

Example (then train on the demonstrations plus this folder, starting from the policy):
  python launch/dagger.py --checkpoint checkpoints/babyai_opendoors --episodes 1500 \\
      --out data/demos/babyai_opendoors/dagger_1
  python launch/train_bc.py --preset babyai --data data/demos/babyai_opendoors --init checkpoints/babyai_opendoors \\
      --out runs/opendoors_dagger --steps 1500
Writes episodes in the demonstration format under --out/<env>/; re-running resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the learner (a BabyAI fm-agent policy)")
    parser.add_argument("--env", help="BabyAI environment (default: the one the checkpoint was trained on)")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=200000, help="episode i uses seed + i (keep clear of eval seeds)")
    parser.add_argument("--temperature", type=float, help="learner sampling temperature (default: the checkpoint's)")
    parser.add_argument("--beta", type=float, default=0.0, help="probability that a step executes the bot's label")
    parser.add_argument("--max-steps", type=int, default=64, help="cap per episode (loops repeat the same states)")
    parser.add_argument("--keep-opened-doors", action="store_true",
                        help="the bot does not close a door the learner opened by mistake (it would teach the "
                        "learner to close doors; harmless to leave open on non-strict levels such as OpenDoorsOrder)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm

    from envs.dagger import collect
    from fm_agent.model import VLAPolicy

    torch.set_num_threads(args.threads)
    policy = VLAPolicy.from_pretrained(args.checkpoint)
    env = args.env or next((e for e in policy.config.training.get("envs", []) if e.startswith("babyai:")), None)
    if env is None:
        parser.error("the checkpoint records no BabyAI environment; pass --env babyai:<level>")
    with tqdm(total=args.episodes, desc="dagger", unit="ep") as bar:
        stats = collect(env, policy, args.out, args.episodes, args.seed, args.temperature, args.beta,
                        args.max_steps, bar, {"keep_opened_doors": True} if args.keep_opened_doors else None)
    print(json.dumps({"env": env, **stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
