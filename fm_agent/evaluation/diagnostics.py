"""Where a BabyAI door-opening policy goes wrong: every toggle in front of a door, classified.

On BabyAI's Open* levels (OpenDoorsOrder, OpenDoor, ...) a failed episode is a timeout, never a
wrong answer: opening the wrong door is allowed, and BabyAI's bot (the DAgger labeller) closes any
door opened by mistake. Success rates therefore hide *why* a policy fails. This job replays
in-process episodes (the same seeds and sampling draws as ``fm-agent eval-local``) and counts, per
mask, each toggle as one of ``KINDS``:

- ``target_opened``: the door the mission needs next;
- ``wrong_opened_target_visible``: a wrong closed door while the needed door is in the current view
  (a grounding error: the policy saw the right door and picked another);
- ``wrong_opened_target_seen_recently``: ... while it was visible in one of the previous history frames;
- ``wrong_opened_target_unseen``: ... while it was in none of the history frames (an exploration error);
- ``closed_a_door``: an open door closed (the bot's repair after a wrong opening, or a wasted step).
"""

from __future__ import annotations

import json
from collections import Counter, deque

import numpy as np
import torch
from tqdm import tqdm

from envs import make_env
from envs.babyai_env import doors_needed_next
from fm_agent_client.masks import FutureMaskSpec

from ..model import VLAPolicy
from .config import DoorErrorsConfig
from .inprocess import InProcessActor
from .rollout import Actor

KINDS = (
    "target_opened",
    "wrong_opened_target_visible",
    "wrong_opened_target_seen_recently",
    "wrong_opened_target_unseen",
    "closed_a_door",
)


def classify_episode(env, actor: Actor, seed: int, max_steps: int, history: int) -> tuple[Counter, bool]:
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


def run_door_errors(config: DoorErrorsConfig, command: str = "") -> int:
    config.validate()
    torch.set_num_threads(config.threads)
    policy = VLAPolicy.from_pretrained(config.checkpoint)
    env = make_env(config.env, image_size=policy.config.image_size)
    report: dict = {
        "command": command,
        "checkpoint": str(config.checkpoint),
        "env": config.env,
        "seeds": [config.seed, config.seed + config.episodes - 1],
        "masks": {},
    }
    try:
        for label in config.masks:
            actor = InProcessActor(policy, FutureMaskSpec.parse(label), config.temperature)
            total: Counter = Counter()
            wins = 0
            for i in tqdm(range(config.episodes), desc=label, unit="ep"):
                counts, success = classify_episode(env, actor, config.seed + i, config.max_steps, policy.config.history)
                total.update(counts)
                wins += success
            report["masks"][label] = {
                "successes": wins,
                "episodes": config.episodes,
                "toggles": {k: total[k] for k in KINDS},
            }
            print(
                f"{label:12s} success {wins}/{config.episodes}; toggles: " + ", ".join(f"{k} {total[k]}" for k in KINDS)
            )
    finally:
        env.close()
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "door_errors.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {config.out / 'door_errors.json'}")
    return 0
