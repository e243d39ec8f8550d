"""DAgger: the learner acts, the expert labels every state the learner reaches (BabyAI and LIBERO).

Behaviour cloning only sees states of the expert's own paths; a learner that drifts off them, or
loops, meets states no demonstration covers. Recording the expert's answer in exactly those states
and training on the union is the standard fix (Ross et al., 2011). Episodes are written in the
demonstration format (frames the learner saw, the expert's labels as actions), so ``train_bc.py``
reads them like any other recording.

The learner runs as it is deployed: it returns a chunk per call and the chunk is executed step by
step, each step labelled. The experts take the executed action as ``taken`` and re-read the world
from it: BabyAI's bot replans, the LIBERO expert reads its phase off the state. The learner is built
by a ``make_actor`` callable (anything with ``start_episode`` / ``act`` / ``end_episode``), so this
module needs nothing of the policy code, and worker processes can build their own.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .recording import Episode, Runner, episode_bytes, episode_metadata, episode_path, labelled_rollout, write_file
from .registry import make_env, make_expert

ActorFactory = Callable[[], Any]


class Outcome(NamedTuple):
    learner_success: bool
    path: Path | None
    data: bytes | None  # the episode file's bytes; None: nothing labelled (or the worker was lost)
    error: str | None = None
    env: str = ""


def dagger_episode(
    env,
    expert,
    actor,
    env_name: str,
    index: int,
    seed: int,
    max_steps: int,
    beta: float = 0.0,
    init_state: int | None = None,
    blind_steps: bool = False,
) -> Episode:
    """One learner rollout labelled by ``expert``; with probability ``beta`` a step executes the label.

    ``blind_steps`` (LIBERO) renders the cameras only for the steps where the learner is asked for its
    next chunk: those are the only images it reads, and the metadata's ``render_every`` (the chunk
    length) tells training to sample only them."""
    options = {"init_state": init_state} if init_state is not None else None
    obs, info = env.reset(seed=seed, options=options)
    expert.reset()
    actor.start_episode(info["instruction"], seed)
    coin = random.Random(seed)
    chunk: deque = deque()
    taken = None
    chunk_length: int | None = None  # every chunk's, under blind steps: the episode's render_every

    def decide(observation) -> tuple[Any, Any]:
        nonlocal taken, chunk_length
        label = expert.act(observation, taken)
        if not chunk:  # the learner is asked once per chunk, as a deployed controller asks it
            chunk.extend(np.asarray(actor.act(observation)[0]))
            if blind_steps and chunk_length not in (None, len(chunk)):
                raise ValueError(
                    f"blind steps need chunks of one length; the learner returned {chunk_length} and {len(chunk)}"
                )
            chunk_length = len(chunk)
        learner = chunk.popleft()
        learner = int(learner) if np.ndim(learner) == 0 else np.asarray(learner, dtype=np.float32)
        taken = label if coin.random() < beta else learner
        return label, taken

    render = (lambda _step: not chunk) if blind_steps else None  # empty: the next step asks the learner
    observations, labels, rewards, success, info = labelled_rollout(env, obs, info, decide, max_steps, render)
    actor.end_episode()
    metadata = {**episode_metadata(info), "learner_success": success, "beta": beta}
    if blind_steps:
        metadata["render_every"] = chunk_length or 1
    return Episode(
        env=env_name,
        index=index,
        seed=seed,
        init_state=init_state,
        instruction=info["instruction"],
        observations=observations,
        actions=labels,
        rewards=rewards,
        success=success,
        expert=f"dagger:{type(expert).__name__}",
        metadata=metadata,
    )


def _collect_shard(
    env_name: str,
    make_actor: ActorFactory,
    out: Path,
    indices: list[int],
    base_seed: int,
    beta: float,
    max_steps: int | None,
    expert_options: dict | None,
    init_states: list[int] | None,
    env_options: dict | None,
    blind_steps: bool = False,
) -> list[Outcome]:
    """Worker body: one env and one learner for ``indices``; returns per episode its learner success and
    its file's path and bytes (None when the expert labelled nothing), for the driver to write."""
    env = make_env(env_name, **(env_options or {}))
    expert = make_expert(env, **(expert_options or {}))
    actor = make_actor()
    outcomes = []
    try:
        for index in indices:
            init_state = init_states[index % len(init_states)] if init_states else None
            limit: int = max_steps if max_steps else getattr(env, "max_steps", 1000)
            episode = dagger_episode(
                env, expert, actor, env_name, index, base_seed + index, limit, beta, init_state, blind_steps
            )
            kept = bool(len(episode.actions))  # the bot may give up before labelling anything
            data = episode_bytes(episode) if kept else None
            outcomes.append(Outcome(episode.success, episode_path(out, env_name, index), data, env=env_name))
    finally:
        env.close()
    return outcomes


def _shard_star(job: tuple) -> list[Outcome]:
    return _collect_shard(*job)


def _lost_shard(job: tuple, error: str) -> list[Outcome]:
    """A shard whose worker was lost writes nothing: its episodes have no file, so a resume runs them."""
    return [Outcome(False, None, None, error, env=job[0]) for _ in job[3]]


def collect(
    env_name: str | Sequence[str],
    make_actor: ActorFactory,
    out: Path,
    episodes: int,
    base_seed: int,
    beta: float,
    max_steps: int | None,
    progress: Any = None,
    expert_options: dict | None = None,
    init_states: list[int] | None = None,
    runner: Runner | None = None,
    env_options: dict | None = None,
    chunk: int = 5,
    blind_steps: bool = False,
) -> dict[str, Any]:
    """Runs and writes ``episodes`` DAgger episodes; existing files are skipped (resumable).

    ``expert_options`` configure the labeller (e.g. ``keep_opened_doors`` for BabyAI's bot);
    ``init_states`` (LIBERO) are the official initial states episodes start from, episode i from
    ``init_states[i % len]``: keep the evaluation states out. ``runner`` runs jobs of ``chunk`` episodes
    (worker processes or Ray actors; ``make_actor`` must then be picklable, e.g. a ``functools.partial``
    of a module-level function; default: one after another here). This process writes every file.
    ``blind_steps``: render only the steps where the learner reads images (see :func:`dagger_episode`).
    Several ``env_name`` (e.g. a LIBERO suite's tasks) go to the runner together, so the workers stay
    busy across tasks; the stats then count each environment too (``environments``)."""
    names = [env_name] if isinstance(env_name, str) else list(env_name)
    jobs = []
    for name in names:
        todo = [i for i in range(episodes) if not episode_path(out, name, i).exists()]
        if progress is not None:
            progress.update(episodes - len(todo))
        jobs += [
            (
                name,
                make_actor,
                out,
                todo[i : i + chunk],
                base_seed,
                beta,
                max_steps,
                expert_options,
                init_states,
                env_options,
                blind_steps,
            )
            for i in range(0, len(todo), chunk)
        ]
    per_env = {name: {"episodes": 0, "learner_successes": 0} for name in names}
    wins = done = skipped = lost = 0
    recent: deque = deque(maxlen=200)
    shards = map(_shard_star, jobs) if runner is None else runner.map_unordered(_shard_star, jobs, _lost_shard)
    for outcomes in shards:
        for outcome in outcomes:
            if outcome.error is not None:
                lost += 1
                continue
            if outcome.data is not None and outcome.path is not None:
                write_file(outcome.path, outcome.data)
            wins, done, skipped = wins + outcome.learner_success, done + 1, skipped + (outcome.data is None)
            per_env[outcome.env]["episodes"] += 1
            per_env[outcome.env]["learner_successes"] += outcome.learner_success
            recent.append(outcome.learner_success)
        if progress is not None:
            progress.update(len(outcomes))
            if recent:
                progress.set_postfix(learner_success=f"{np.mean(recent):.2f}")
    stats: dict[str, Any] = {"episodes": done, "learner_successes": wins, "unlabelled_skipped": skipped}
    if lost:
        stats["lost_to_workers"] = lost
    if len(names) > 1:
        stats["environments"] = per_env
    return stats
