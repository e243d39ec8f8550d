"""``fm-agent record`` and ``fm-agent dagger``: the loops live in ``envs`` (recording, DAgger), which
knows nothing of the policy code; these runners check the request, pick the learner and report."""

from __future__ import annotations

import functools
import json
import os

from tqdm import tqdm

from envs.dagger import collect
from envs.libero_env import LiberoError, check_tasks
from envs.recording import RecordSettings, record

from ..distributed.runners import job_runner
from ..evaluation.inprocess import load_actor
from ..evaluation.jobs import check_envs
from ..jobs import ConfigError
from ..model import VLAConfig
from .config import DaggerConfig, RecordConfig


def suite_envs(suite: str, tasks: tuple[int, ...] | None) -> list[str]:
    """``libero:SUITE/T`` for ``tasks`` (default: every task of the suite), checked against the suite."""
    try:
        known = check_tasks(suite, list(tasks) if tasks is not None else None)
    except LiberoError as error:
        raise ConfigError(str(error)) from None
    return [f"libero:{suite}/{t}" for t in (tasks if tasks is not None else sorted(known))]


def run_record(config: RecordConfig, command: str = "") -> int:
    config.validate()
    os.environ.setdefault("MUJOCO_GL", "egl")
    if config.suite is not None:
        names = suite_envs(config.suite, config.tasks)
    else:
        names = list(config.envs or ())
        check_envs(names, "--envs")
    settings = RecordSettings(
        out=config.out,
        only_success=not config.keep_failures,
        save=config.save,
        image_size=config.image_size,
        render=config.render,
        base_seed=config.seed,
        action_noise=config.action_noise,
        render_every=config.render_every,
    )
    with job_runner(config.workers, config.ray) as runner:
        summary = record(
            names,
            config.episodes,
            settings,
            runner=runner,
            chunk=config.chunk,
            progress=lambda it, total: tqdm(total=total, desc="episodes", unit="ep"),
            indices=config.state_indices(),
        )
    for name, stats in summary["environments"].items():
        print(
            f"{name:48s} {stats['successes']:4d}/{stats['episodes']:<4d} {100 * stats['success_rate']:5.1f}%"
            + (f"  ({stats['errors']} errors)" if stats["errors"] else "")
        )
    print(
        f"overall {100 * summary['success_rate']:.1f}% over {summary['episodes']} episodes; "
        f"summary in {config.out / 'summary.json'}"
    )
    episodes = summary["episodes"]
    errors = sum(stats["errors"] for stats in summary["environments"].values())
    return 1 if episodes and errors == episodes else 0


def run_dagger(config: DaggerConfig, command: str = "") -> int:
    config.validate()
    os.environ.setdefault("MUJOCO_GL", "egl")
    policy_config = VLAConfig.load(config.checkpoint)
    if config.suite is not None:
        envs = suite_envs(config.suite, config.tasks)
    else:
        env = config.env or next((e for e in policy_config.training.get("envs", []) if e.startswith("babyai:")), None)
        if env is None:
            raise ConfigError("the checkpoint records no BabyAI environment; pass --env (or --suite)")
        check_envs([env])
        envs = [env]
    libero = envs[0].startswith("libero:")
    if config.blind_steps and not libero:
        raise ConfigError("--blind-steps is for LIBERO environments (BabyAI renders at no cost)")
    init_states = config.state_indices()
    if init_states and not libero:
        raise ConfigError("--init-states is for LIBERO environments")
    env_options = {"image_size": config.image_size} if config.image_size else None
    max_steps = config.max_steps or (None if libero else 64)
    # an absolute path: a Ray worker may start in another folder (or on another node with the same tree)
    make_actor = functools.partial(load_actor, config.checkpoint.resolve(), config.temperature, None, config.threads)
    expert_options = {"keep_opened_doors": True} if config.keep_opened_doors else None
    total = config.episodes * len(envs)
    with tqdm(total=total, desc="dagger", unit="ep") as bar, job_runner(config.workers, config.ray) as runner:
        stats = collect(
            envs,
            make_actor,
            config.out,
            config.episodes,
            config.seed,
            config.beta,
            max_steps,
            bar,
            expert_options,
            init_states,
            runner,
            env_options,
            blind_steps=config.blind_steps,
        )
    print(json.dumps({"env": envs[0] if len(envs) == 1 else config.suite, **stats}))
    return 0
