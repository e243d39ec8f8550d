#!/usr/bin/env python
"""Where a BabyAI door-opening policy goes wrong: every toggle in front of a door, classified.

On BabyAI's Open* levels (OpenDoorsOrder, OpenDoor, ...) a failed episode is a timeout, never a
wrong answer: opening the wrong door is allowed, and BabyAI's bot (the DAgger labeller) closes any
door opened by mistake. Success rates therefore hide *why* a policy fails. This script replays
in-process episodes (the same seeds and sampling draws as ``launch/eval_policy.py``) and counts,
per mask, each toggle as one of:

- ``target_opened``: the door the mission needs next;
- ``wrong_opened_target_visible``: a wrong closed door while the needed door is in the current view
  (a grounding error: the policy saw the right door and picked another);
- ``wrong_opened_target_seen_recently``: ... while it was visible in one of the previous history frames;
- ``wrong_opened_target_unseen``: ... while it was in none of the history frames (an exploration error);
- ``closed_a_door``: an open door closed (the bot's repair after a wrong opening, or a wasted step).

Example:
  python launch/door_errors.py --checkpoint checkpoints/babyai_opendoors --episodes 100 --masks causal Mv2t \\
      --out runs/door_errors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("target_opened", "wrong_opened_target_visible", "wrong_opened_target_seen_recently",
         "wrong_opened_target_unseen", "closed_a_door")


def classify_episode(env, actor, seed: int, max_steps: int, history: int) -> tuple[Counter, bool]:
    import numpy as np

    from envs.babyai_env import doors_needed_next

    obs, info = env.reset(seed=seed)
    actor.start_episode(info["instruction"], seed)
    world = env.unwrapped_env
    seen: deque = deque(maxlen=history)
    counts: Counter = Counter()
    try:
        for _ in range(max_steps):
            targets = doors_needed_next(world.instrs)
            seen.append(any(world.agent_sees(*door.cur_pos) for door in targets))
            action = int(np.asarray(actor.act(obs)[0]).reshape(-1)[0])
            front = world.grid.get(*world.front_pos)
            if action == world.actions.toggle and front is not None and front.type == "door":
                if front.is_open:
                    counts["closed_a_door"] += 1
                elif any(front is door for door in targets):
                    counts["target_opened"] += 1
                elif seen[-1]:
                    counts["wrong_opened_target_visible"] += 1
                else:
                    counts["wrong_opened_target_seen_recently" if any(seen) else "wrong_opened_target_unseen"] += 1
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
    finally:
        actor.end_episode()
    return counts, bool(info.get("success", False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--env", default="babyai:BabyAI-OpenDoorsOrderN4-v0", help="a BabyAI Open* level")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=100_000, help="first episode seed")
    parser.add_argument("--masks", nargs="+", default=["causal"])
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--temperature", type=float, help="default: the checkpoint's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/door_errors"))
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm

    from envs import make_env
    from fm_agent.attention import FutureMaskSpec
    from fm_agent.evaluation.rollout import InProcessActor
    from fm_agent.model import VLAPolicy

    torch.set_num_threads(args.threads)
    policy = VLAPolicy.from_pretrained(args.checkpoint)
    env = make_env(args.env, image_size=policy.config.image_size)
    report = {"command": " ".join(sys.argv), "checkpoint": str(args.checkpoint), "env": args.env,
              "seeds": [args.seed, args.seed + args.episodes - 1], "masks": {}}
    try:
        for label in args.masks:
            actor = InProcessActor(policy, FutureMaskSpec.parse(label), args.temperature)
            total, wins = Counter(), 0
            for i in tqdm(range(args.episodes), desc=label, unit="ep"):
                counts, success = classify_episode(env, actor, args.seed + i, args.max_steps, policy.config.history)
                total.update(counts)
                wins += success
            report["masks"][label] = {"successes": wins, "episodes": args.episodes,
                                      "toggles": {k: total[k] for k in KINDS}}
            print(f"{label:12s} success {wins}/{args.episodes}; toggles: "
                  + ", ".join(f"{k} {total[k]}" for k in KINDS))
    finally:
        env.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "door_errors.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'door_errors.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    sys.exit(main())
