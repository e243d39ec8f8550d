#!/usr/bin/env python
"""Collect DAgger data: the policy acts (a chunk per call, executed step by step), the expert labels each state.
BabyAI's bot labels BabyAI levels; the privileged-state scripted expert labels LIBERO tasks.
Examples (then train on the demonstrations plus this folder, starting from the policy):
  python launch/dagger.py --checkpoint checkpoints/babyai_opendoors --episodes 1500 \\
      --out data/demos/babyai_opendoors/dagger_1
  python launch/train_bc.py --preset babyai --data data/demos/babyai_opendoors --init checkpoints/babyai_opendoors \\
      --out runs/opendoors_dagger --steps 1500
  python launch/dagger.py --checkpoint checkpoints/libero_spatial --env libero:libero_spatial/7 \\
      --init-states 0-9 15-49 --episodes 45 --image-size 64 --workers 2 --out data/demos/libero_spatial_dagger_1
Writes episodes in the demonstration format under --out/<env>/; re-running resumes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the learner (an fm-agent policy)")
    parser.add_argument("--env", help="environment, e.g. babyai:BabyAI-OpenDoorsOrderN4-v0 or libero:libero_spatial/7 "
                                      "(default: the BabyAI level the checkpoint was trained on)")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=200000, help="episode i uses seed + i (keep clear of eval seeds)")
    parser.add_argument("--temperature", type=float, help="learner sampling temperature (default: the checkpoint's)")
    parser.add_argument("--beta", type=float, default=0.0, help="probability that a step executes the expert's label")
    parser.add_argument("--max-steps", type=int, help="cap per episode (default: 64 for BabyAI, where loops repeat "
                                                      "the same states; the task's budget for LIBERO)")
    parser.add_argument("--init-states", nargs="+", metavar="I or A-B",
                        help="LIBERO: official initial states to start from, cycled (keep evaluation states out)")
    parser.add_argument("--image-size", type=int, help="LIBERO camera size (default: the env's; use the policy's)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each builds its env and learner)")
    parser.add_argument("--keep-opened-doors", action="store_true",
                        help="BabyAI: the bot does not close a door the learner opened by mistake (it would teach the "
                        "learner to close doors; harmless to leave open on non-strict levels such as OpenDoorsOrder)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")

    from tqdm import tqdm

    from envs.dagger import collect
    from envs.recording import parse_index_ranges
    from fm_agent.evaluation.rollout import load_actor
    from fm_agent.model import VLAConfig

    config = VLAConfig.load(args.checkpoint)
    env = args.env or next((e for e in config.training.get("envs", []) if e.startswith("babyai:")), None)
    if env is None:
        parser.error("the checkpoint records no BabyAI environment; pass --env")
    libero = env.startswith("libero:")
    init_states = parse_index_ranges(args.init_states, 50) if args.init_states else None
    if init_states and not libero:
        parser.error("--init-states is for LIBERO environments")
    env_options = {"image_size": args.image_size} if args.image_size else None
    max_steps = args.max_steps or (None if libero else 64)
    make_actor = functools.partial(load_actor, args.checkpoint, args.temperature, None, args.threads)
    expert_options = {"keep_opened_doors": True} if args.keep_opened_doors else None
    with tqdm(total=args.episodes, desc="dagger", unit="ep") as bar:
        stats = collect(env, make_actor, args.out, args.episodes, args.seed, args.beta, max_steps, bar,
                        expert_options, init_states, args.workers, env_options)
    print(json.dumps({"env": env, **stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
