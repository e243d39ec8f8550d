"""Expert demonstrations on disk: one HDF5 file per episode, plus a manifest for resuming.

Layout of ``<out>/``::

    manifest.jsonl                  one line per finished episode (kept or not), appended as they finish
    summary.json                    expert success per environment
    <env-slug>/episode_<index>.h5   a kept episode

An episode file holds, for T steps (observation t is what the expert saw before action t):

    /observations/<camera>   uint8 (T, H, W, 3), gzip    e.g. agentview, wrist (LIBERO); image (BabyAI)
    /observations/proprio    float32 (T, P)              LIBERO only
    /observations/direction  int64 (T,)                  BabyAI only
    /actions                 float32 (T, 7) or int64 (T,)
    /rewards                 float32 (T,)
    attrs: format, env, index, seed, init_state, instruction, success, num_steps, expert, mission metadata

Files are written to a temporary name and renamed, so a killed recorder never leaves a half file.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .experts import ExpertGaveUp
from .registry import make_env, make_expert

FORMAT = "fm-agent-episode/1"


class Runner(Protocol):
    """Where fan-out jobs run (``fm_agent.distributed``: worker processes or Ray actors): ``fn`` over
    ``jobs``, results as they finish; ``lost(job, reason)`` stands in for a job whose worker was lost."""

    def map_unordered(self, fn: Callable, jobs: Sequence, lost: Callable | None = None) -> Iterable: ...


TEXT_KEYS = ("instruction",)
TRANSLATION_DIMS = 3  # LIBERO's OSC_POSE actions start with the end-effector's xyz motion


@dataclass
class Episode:
    env: str
    index: int
    seed: int
    init_state: int | None
    instruction: str
    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    success: bool
    expert: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(len(self.actions))


def env_slug(name: str) -> str:
    """``libero:libero_spatial/3`` -> ``libero-libero_spatial-3`` (a safe folder name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


def episode_path(out: Path, env: str, index: int) -> Path:
    return out / env_slug(env) / f"episode_{index:06d}.h5"


def episode_bytes(episode: Episode) -> bytes:
    """The episode as the bytes of its HDF5 file: workers (possibly on other machines) return these and
    the driver alone writes files, so a run's output lives where the driver runs."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        group = f.create_group("observations")
        for key, value in episode.observations.items():
            value = np.asarray(value)
            if value.dtype == np.uint8 and value.ndim == 4:
                group.create_dataset(
                    key, data=value, compression="gzip", compression_opts=4, chunks=(1, *value.shape[1:])
                )
            else:
                group.create_dataset(key, data=value)
        f.create_dataset("actions", data=episode.actions)
        f.create_dataset("rewards", data=episode.rewards.astype(np.float32))
        attrs = {
            "format": FORMAT,
            "env": episode.env,
            "index": episode.index,
            "seed": episode.seed,
            "init_state": -1 if episode.init_state is None else episode.init_state,
            "instruction": episode.instruction,
            "success": episode.success,
            "num_steps": episode.num_steps,
            "expert": episode.expert,
            "metadata": json.dumps(episode.metadata),
        }
        f.attrs.update(attrs)
    return buffer.getvalue()


def write_file(path: Path, data: bytes) -> Path:
    """Written to a temporary name and renamed: a killed writer never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_episode(path: Path, episode: Episode) -> Path:
    return write_file(path, episode_bytes(episode))


def read_episode(path: Path) -> Episode:
    import h5py

    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not an {FORMAT} file (format={f.attrs.get('format')!r})")
        a = f.attrs
        init_state = int(a["init_state"])
        return Episode(
            env=str(a["env"]),
            index=int(a["index"]),
            seed=int(a["seed"]),
            init_state=None if init_state < 0 else init_state,
            instruction=str(a["instruction"]),
            observations={k: f["observations"][k][()] for k in f["observations"]},
            actions=f["actions"][()],
            rewards=f["rewards"][()],
            success=bool(a["success"]),
            expert=str(a["expert"]),
            metadata=json.loads(a["metadata"]),
        )


def run_expert_episode(
    env,
    expert,
    env_name: str,
    index: int,
    seed: int,
    init_state: int | None,
    max_steps: int | None = None,
    action_noise: float = 0.0,
    render_every: int = 1,
) -> Episode:
    """Roll the expert out once and keep everything the policy will be trained on.

    ``action_noise`` > 0 (continuous actions only) executes the expert's action plus Gaussian noise of
    that standard deviation on the translation dimensions while keeping the clean action as the label
    (DART, Laskey et al. 2017): the data then shows how the expert steers back from the small
    deviations a cloned policy makes, which clean demonstrations never visit.

    ``render_every`` > 1 (LIBERO) renders the cameras only at steps 0, N, 2N, ...: a deployed policy
    with a chunk of N reads images only there, and a rendered step costs about 16 times a blind one on
    a CPU machine. The other steps keep the last image; the episode's metadata says so, and training
    samples only the rendered steps (:func:`fm_agent.data.episodes.all_samples`)."""
    options = {"init_state": init_state} if init_state is not None else None
    obs, info = env.reset(seed=seed, options=options)
    expert.reset()
    noise = np.random.default_rng(seed)

    def decide(observation) -> tuple[Any, Any]:
        action = expert.act(observation)
        if not action_noise:
            return action, action
        executed = np.array(action, dtype=np.float32)
        executed[:TRANSLATION_DIMS] += noise.normal(0.0, action_noise, TRANSLATION_DIMS)
        return action, np.clip(executed, -1.0, 1.0)

    render = (lambda step: (step + 1) % render_every == 0) if render_every > 1 else None
    observations, actions, rewards, success, info = labelled_rollout(
        env, obs, info, decide, max_steps if max_steps else getattr(env, "max_steps", 1000), render
    )
    metadata = {**episode_metadata(info), **({"action_noise": action_noise} if action_noise else {})}
    if render_every > 1:
        metadata["render_every"] = render_every
    return Episode(
        env=env_name,
        index=index,
        seed=seed,
        init_state=init_state,
        instruction=info["instruction"],
        observations=observations,
        actions=actions,
        rewards=rewards,
        success=success,
        expert=type(expert).__name__,
        metadata=metadata,
    )


METADATA_KEYS = ("has_location_phrase", "num_subgoals", "sequence", "suite", "task_id", "expert_gave_up")


def episode_metadata(info: dict) -> dict:
    """The mission / task fields of an env's ``info`` that an episode file keeps."""
    return {k: v for k, v in info.items() if k in METADATA_KEYS}


def labelled_rollout(
    env,
    obs,
    info: dict,
    decide: Callable[[Any], tuple[Any, Any]],
    limit: int,
    render: Callable[[int], bool] | None = None,
):
    """Steps ``env`` from ``obs`` (and its reset ``info``) for at most ``limit`` steps; ``decide(obs)``
    returns (label, executed action). Keeps every observed frame with its label: the expert's own path when the two are the
    same action, a learner's path labelled by the expert in DAgger.

    If the expert gives up (:class:`ExpertGaveUp`, e.g. in a state a learner led it to), the rollout
    ends there with the steps labelled so far and ``info["expert_gave_up"]`` set.

    ``render(step)`` (an env with blind steps, LIBERO) says whether the observation after ``step`` needs
    fresh images; a blind step keeps the previous ones. None renders every step.

    Returns (frames per key stacked, labels, rewards, success, the reset info updated by every step's)."""
    if render is not None and not getattr(env, "supports_blind_steps", False):
        raise ValueError(f"{type(env).__name__} cannot skip rendering; record it with every step rendered")
    frames: dict[str, list] = {k: [] for k in obs if k not in TEXT_KEYS}
    labels, rewards, success, info = [], [], False, dict(info)
    for step in range(limit):
        try:
            label, executed = decide(obs)
        except ExpertGaveUp as error:
            info["expert_gave_up"] = str(error)
            break
        for key in frames:
            frames[key].append(np.asarray(obs[key]))
        if render is None:
            obs, reward, terminated, truncated, step_info = env.step(executed)
        else:
            obs, reward, terminated, truncated, step_info = env.step(executed, render=render(step))
        info.update(step_info)
        labels.append(label)
        rewards.append(reward)
        success = bool(step_info.get("success", False))
        if terminated or truncated:
            break
    stacked = {k: np.stack(v) if v else np.asarray(obs[k])[None][:0] for k, v in frames.items()}  # [:0]: no steps
    return stacked, np.asarray(labels), np.asarray(rewards, dtype=np.float32), success, info


def parse_index_ranges(items: list[str], upper: int) -> list[int]:
    """``["0-9", "15", "20-22"]`` -> [0, ..., 9, 15, 20, 21, 22], each in ``0..upper-1``."""
    indices: set[int] = set()
    for item in items:
        low, _, high = item.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"{item!r} is not an index or a range A-B")
        first, last = int(low), int(high or low)
        if first > last or last >= upper:
            raise ValueError(f"{item!r} is outside 0-{upper - 1} or reversed")
        indices.update(range(first, last + 1))
    return sorted(indices)


def episode_plan(env_name: str, index: int, base_seed: int = 0) -> tuple[int, int | None]:
    """(seed, initial state) of episode ``index``: LIBERO cycles its 50 official states."""
    if env_name.startswith("libero:"):
        return base_seed + index, index % 50
    return base_seed + index, None


@dataclass(frozen=True)
class RecordSettings:
    out: Path
    only_success: bool = True
    save: bool = True
    image_size: int | None = None
    render: str | None = None
    base_seed: int = 0
    action_noise: float = 0.0
    render_every: int = 1


def _planned_row(env_name: str, index: int, settings: RecordSettings) -> dict[str, Any]:
    """The manifest fields an episode has before it runs: which env, index, seed and initial state."""
    seed, init_state = episode_plan(env_name, index, settings.base_seed)
    return {"env": env_name, "index": index, "seed": seed, "init_state": init_state}


def record_chunk(env_name: str, indices: list[int], settings: RecordSettings) -> list[tuple[dict, bytes | None]]:
    """Worker body: build the env once, record ``indices``; returns (manifest row, episode file bytes or
    None) per episode, for the driver to write."""
    kwargs: dict[str, Any] = {}
    if settings.image_size:
        kwargs["image_size"] = settings.image_size
    if settings.render and env_name.startswith("libero:"):
        kwargs["render"] = settings.render
    env = make_env(env_name, **kwargs)
    rows: list[dict] = []
    files: list[bytes | None] = []
    try:
        expert = make_expert(env)
        for index in indices:
            row = _planned_row(env_name, index, settings)
            seed, init_state = row["seed"], row["init_state"]
            try:
                episode = run_expert_episode(
                    env,
                    expert,
                    env_name,
                    index,
                    seed,
                    init_state,
                    action_noise=settings.action_noise,
                    render_every=settings.render_every,
                )
            except Exception as error:  # a crashed simulator loses one episode, not the run
                rows.append({**row, "success": False, "error": f"{type(error).__name__}: {error}", "path": None})
                files.append(None)
                continue
            path, data = None, None
            if settings.save and (episode.success or not settings.only_success):
                path = str(episode_path(settings.out, env_name, index).relative_to(settings.out))
                data = episode_bytes(episode)
            rows.append(
                {**row, "success": episode.success, "steps": episode.num_steps, "path": path, **episode.metadata}
            )
            files.append(data)
    finally:
        env.close()
    return list(zip(rows, files))


def _record_chunk_star(job: tuple[str, list[int], RecordSettings]) -> list[tuple[dict, bytes | None]]:
    return record_chunk(*job)


def _lost_chunk(job: tuple[str, list[int], RecordSettings], error: str) -> list[tuple[dict, bytes | None]]:
    """The rows of a chunk whose worker was lost: errors, retried when the run resumes."""
    env_name, indices, settings = job
    rows: list[tuple[dict, bytes | None]] = []
    for index in indices:
        rows.append(({**_planned_row(env_name, index, settings), "success": False, "error": error, "path": None}, None))
    return rows


def finished_episodes(out: Path) -> set[tuple[str, int]]:
    manifest = out / "manifest.jsonl"
    if not manifest.exists():
        return set()
    done = set()
    for line in manifest.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if "error" not in row:  # errored episodes are retried on resume
                done.add((row["env"], row["index"]))
    return done


def summarise_manifest(out: Path) -> dict[str, Any]:
    rows = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines() if l.strip()]
    latest = {(r["env"], r["index"]): r for r in rows}
    per_env: dict[str, dict[str, Any]] = {}
    for row in latest.values():
        stats = per_env.setdefault(row["env"], {"episodes": 0, "successes": 0, "errors": 0, "kept": 0})
        stats["episodes"] += 1
        stats["successes"] += bool(row["success"])
        stats["errors"] += "error" in row
        stats["kept"] += row.get("path") is not None
    for stats in per_env.values():
        stats["success_rate"] = stats["successes"] / max(stats["episodes"], 1)
    total = sum(s["episodes"] for s in per_env.values())
    return {
        "environments": dict(sorted(per_env.items())),
        "episodes": total,
        "success_rate": sum(s["successes"] for s in per_env.values()) / max(total, 1),
    }


def record(
    env_names: list[str],
    episodes: int,
    settings: RecordSettings,
    runner: Runner | None = None,
    chunk: int = 5,
    progress: Callable[[Iterable, int], Iterable] | None = None,
    indices: Iterable[int] | None = None,
) -> dict[str, Any]:
    """Record ``episodes`` expert episodes per environment, resuming what ``settings.out`` already holds.

    ``indices`` replaces ``range(episodes)``: for LIBERO, episode ``i`` starts from official initial
    state ``i % 50``, so listing indices keeps held-out evaluation states out of the training data.
    ``runner`` runs the chunks of ``chunk`` episodes (worker processes, Ray actors; default: one after
    another here); this process writes every file and manifest row."""
    settings.out.mkdir(parents=True, exist_ok=True)
    done = finished_episodes(settings.out)
    wanted = sorted(set(indices)) if indices is not None else list(range(episodes))
    jobs = []
    for name in env_names:
        todo = [i for i in wanted if (name, i) not in done]
        jobs += [(name, todo[s : s + chunk], settings) for s in range(0, len(todo), chunk)]
    total = sum(len(j[1]) for j in jobs)
    manifest = (settings.out / "manifest.jsonl").open("a")
    try:
        if runner is None:
            results: Iterable = map(_record_chunk_star, jobs)
        else:
            results = runner.map_unordered(_record_chunk_star, jobs, _lost_chunk)
        _drain(results, manifest, settings.out, total, progress)
    finally:
        manifest.close()
    summary = summarise_manifest(settings.out)
    (settings.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _drain(results: Iterable[list[tuple[dict, bytes | None]]], manifest, out: Path, total: int, progress) -> None:
    bar = progress(range(total), total) if progress else None
    successes = finished = 0
    for rows in results:
        for row, data in rows:
            if data is not None:  # the file first: a manifest row never names a missing file
                write_file(out / row["path"], data)
            manifest.write(json.dumps(row) + "\n")
            finished += 1
            successes += bool(row["success"])
        manifest.flush()
        if bar is not None:
            bar.update(len(rows))
            bar.set_postfix(success=f"{successes}/{finished}")
    if bar is not None:
        bar.close()
