"""DAgger for BabyAI: the learner acts, BabyAI's bot labels every state the learner reaches.

Behaviour cloning only sees states of the bot's own (perfect) paths; a learner that drifts off them,
or loops, meets states no demonstration covers. Recording the bot's answer in exactly those states
and training on the union is the standard fix (Ross et al., 2011). Episodes are written in the
demonstration format (frames the learner saw, the bot's labels as actions), so ``train_bc.py`` reads
them like any other recording.
"""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from .recording import Episode, episode_metadata, episode_path, labelled_rollout, write_episode


def dagger_episode(env, expert, actor, env_name: str, index: int, seed: int, max_steps: int,
                   beta: float = 0.0) -> Episode:
    """One learner rollout labelled by ``expert``; with probability ``beta`` a step executes the label."""
    obs, info = env.reset(seed=seed)
    expert.reset()
    actor.start_episode(info["instruction"], seed)
    coin = random.Random(seed)
    taken = None

    def decide(observation) -> tuple[int, int]:
        nonlocal taken
        label = expert.act(observation, taken)
        learner = int(np.asarray(actor.act(observation)[0]).reshape(-1)[0])
        taken = label if coin.random() < beta else learner
        return label, taken

    observations, labels, rewards, success, info = labelled_rollout(env, obs, info, decide, max_steps)
    actor.end_episode()
    metadata = {**episode_metadata(info), "learner_success": success}
    return Episode(env=env_name, index=index, seed=seed, init_state=None, instruction=info["instruction"],
                   observations=observations, actions=labels, rewards=rewards, success=success,
                   expert=f"dagger:{type(expert).__name__}", metadata=metadata)


def collect(env_name: str, policy, out: Path, episodes: int, base_seed: int, temperature: float, beta: float,
            max_steps: int, progress: Any = None, expert_options: dict | None = None) -> dict[str, float]:
    """Runs and writes ``episodes`` DAgger episodes (existing files are skipped: resumable);
    ``expert_options`` configure the labeller (e.g. ``keep_opened_doors`` for BabyAI's bot)."""
    from fm_agent.attention import FutureMaskSpec
    from fm_agent.evaluation.rollout import InProcessActor

    from .registry import make_env, make_expert

    env = make_env(env_name)
    expert = make_expert(env, **(expert_options or {}))
    actor = InProcessActor(policy, FutureMaskSpec.parse(policy.config.default_mask), temperature)
    wins = done = skipped = 0
    recent: deque = deque(maxlen=200)
    for index in range(episodes):
        path = episode_path(out, env_name, index)
        if not path.exists():
            episode = dagger_episode(env, expert, actor, env_name, index, base_seed + index, max_steps, beta)
            if len(episode.actions):  # the bot may give up before labelling anything; nothing to keep then
                write_episode(path, episode)
            else:
                skipped += 1
            wins += episode.success
            done += 1
            recent.append(episode.success)
        if progress is not None:
            progress.update(1)
            if recent:
                progress.set_postfix(learner_success=f"{np.mean(recent):.2f}")
    env.close()
    return {"episodes": done, "learner_successes": wins, "unlabelled_skipped": skipped}
