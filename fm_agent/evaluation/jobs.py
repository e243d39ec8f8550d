"""The evaluation jobs: LIBERO and BabyAI through the policy server, and the in-process quick look.

Every check that can fail without running an episode (suite, task indices, installed resources,
levels, the checkpoint's vocabulary) runs before a server or a simulator starts; a run whose
every episode errored exits 1.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from envs import EnvNameError, check_env, make_env
from envs.libero_env import LiberoError, check_tasks
from fm_agent_client.masks import FutureMaskSpec

from ..jobs import ConfigError
from ..model import VLAConfig, VLAPolicy
from ..model.text_tokenizer import unknown_words
from .config import BabyAIEvalConfig, LiberoEvalConfig, LocalEvalConfig, ServerEvalConfig
from .harness import EpisodeJob, evaluate, print_summary
from .inprocess import InProcessActor
from .rollout import RandomActor, format_within, run_episode, summarise

FALLBACK_LEVEL = "BabyAI-OpenDoorsOrderN4-v0"


def warn_unknown_words(checkpoint: Path | None, instructions: list[str]) -> list[str]:
    """Warns (does not refuse) when instructions use words the checkpoint never saw: they reach the
    model as ``<unk>``, which is legitimate for a language-perturbed suite but worth knowing."""
    tokenizer = checkpoint / "tokenizer.json" if checkpoint is not None else None
    if tokenizer is None or not tokenizer.exists() or not instructions:
        return []
    unknown = unknown_words(tokenizer, instructions)
    if unknown:
        print(
            f"warning: {len(unknown)} instruction word(s) are outside {checkpoint}'s vocabulary and reach the "
            f"model as <unk>: {', '.join(unknown[:12])}{' ...' if len(unknown) > 12 else ''}"
        )
    return unknown


def check_envs(names: list[str], flag: str = "--env") -> list[str | None]:
    """Each environment can be built (without building it): its fixed instruction (LIBERO) or None
    (BabyAI, generated per episode); ConfigError naming the first that cannot."""
    try:
        return [check_env(name) for name in names]
    except (EnvNameError, LiberoError) as error:
        raise ConfigError(f"{flag}: {error}") from None


def _exit_code(summary: dict) -> int:
    """1 when episodes errored and none finished (a broken setup, not a policy that failed), else 0."""
    masks = summary["masks"].values()
    finished = sum(m["overall"]["episodes"] for m in masks)  # episodes without an error
    errors = sum(m["errors"] for m in masks)
    if errors and not finished:
        print(f"every one of the {errors} episodes errored: see the error field in episodes.jsonl")
        return 1
    return 0


def _checkpoint_image_size(config: ServerEvalConfig) -> int | None:
    return None if config.server else VLAConfig.load(config.checkpoint).image_size


def run_libero_eval(config: LiberoEvalConfig, command: str = "") -> int:
    config.validate()
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        instructions = check_tasks(config.suite, list(config.tasks) if config.tasks is not None else None)
    except LiberoError as error:
        raise ConfigError(str(error)) from None
    tasks = sorted(instructions) if config.tasks is None else list(config.tasks)
    warn_unknown_words(None if config.server else config.checkpoint, list(instructions.values()))
    states = config.states()
    image_size = config.image_size or _checkpoint_image_size(config) or 128
    out = config.out or Path("runs/libero_eval")
    # task by task, so that consecutive jobs share a simulator (a worker keeps two); masks innermost, so
    # an interrupted sweep still compares every mask on the same episodes
    jobs = [
        EpisodeJob(mask, f"libero:{config.suite}/{t}", i, config.seed + i, s)
        for t in tasks
        for i, s in enumerate(states)
        for mask in config.masks
    ]
    summary = evaluate(
        jobs,
        config,
        out,
        {"image_size": image_size, "render": config.render},
        "agentview",
        ("init_state",),
        {"suite": config.suite, "tasks": tasks, "init_states": states, "command": command},
    )
    print_summary(summary)
    print(f"wrote {out / 'summary.json'}, {out / 'summary.png'} and {out / 'episodes.jsonl'}")
    return _exit_code(summary)


def trained_levels(checkpoint: Path) -> list[str]:
    """The BabyAI levels a checkpoint was trained on (recorded by the train job), for a default that matches."""
    try:
        envs = VLAConfig.load(checkpoint).training.get("envs", [])
    except FileNotFoundError:
        return [FALLBACK_LEVEL]
    return [e.split(":", 1)[1] for e in envs if e.startswith("babyai:")] or [FALLBACK_LEVEL]


def run_babyai_eval(config: BabyAIEvalConfig, command: str = "") -> int:
    config.validate()
    levels = list(config.levels) if config.levels else trained_levels(config.checkpoint)
    check_envs([f"babyai:{level}" for level in levels], "--levels")
    out = config.out or Path("runs/alfred_eval")
    jobs = [
        EpisodeJob(mask, f"babyai:{level}", i, config.seed + i, None)
        for i in range(config.episodes)
        for level in levels
        for mask in config.masks
    ]
    summary = evaluate(
        jobs,
        config,
        out,
        {"image_size": config.image_size},
        "image",
        ("has_location_phrase", "num_subgoals", "sequence"),
        {"levels": levels, "episodes": config.episodes, "command": command},
    )
    print_summary(summary)
    print(f"wrote {out / 'summary.json'}, {out / 'summary.png'} and {out / 'episodes.jsonl'}")
    return _exit_code(summary)


def run_local_eval(config: LocalEvalConfig, command: str = "") -> int:
    config.validate()
    os.environ.setdefault("MUJOCO_GL", "egl")
    instructions = [text for text in check_envs(list(config.env)) if text]
    warn_unknown_words(config.checkpoint, instructions)
    torch.set_num_threads(config.threads)
    config.out.mkdir(parents=True, exist_ok=True)
    policy = None if config.checkpoint is None else VLAPolicy.from_pretrained(config.checkpoint)
    labels = ["random"] if policy is None else list(config.masks)
    size = config.image_size if policy is None else policy.config.image_size
    report: dict = {"command": command, "checkpoint": str(config.checkpoint) if policy else None, "masks": {}}
    if policy is not None:
        report["temperature"] = policy.config.temperature if config.temperature is None else config.temperature
    for label in labels:
        actor = None if policy is None else InProcessActor(policy, FutureMaskSpec.parse(label), config.temperature)
        results = []
        bar = tqdm(total=config.episodes * len(config.env), desc=label, unit="ep")
        for name in config.env:
            env = make_env(name, image_size=size)
            env_actor = actor or RandomActor(env.action_space)
            try:
                for i in range(config.episodes):
                    options = {"init_state": i % 50} if name.startswith("libero:") else None
                    results.append(run_episode(env, env_actor, name, i, config.seed + i, options, config.max_steps))
                    bar.update(1)
                    bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")
            finally:
                env.close()
        bar.close()
        summary = summarise(results, ("has_location_phrase", "num_subgoals", "sequence"), config.success_within)
        report["masks"][label] = summary
        with (config.out / f"episodes_{label.replace('/', '_')}.jsonl").open("w") as f:
            for r in results:
                f.write(json.dumps(asdict(r)) + "\n")
        o = summary["overall"]
        print(
            f"{label:14s} success {o['successes']}/{o['episodes']} = {100 * o['success_rate']:.1f}% "
            f"(95% CI {100 * o['ci95'][0]:.1f}-{100 * o['ci95'][1]:.1f}); steps to success p50 "
            f"{o['steps_to_success'].get('p50', float('nan')):.0f}; policy p50 "
            f"{summary['latency_ms']['policy_round_trip'].get('p50', float('nan')):.1f} ms" + format_within(o)
        )
    (config.out / "summary.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {config.out / 'summary.json'}")
    return 0
