"""Where fan-out jobs run: worker processes of this machine, or Ray actors anywhere on a cluster.

Evaluation episodes, demonstration recording and DAgger collection all fan out the same way: one
module-level function applied to a list of picklable jobs, the results consumed in completion order
by the driver. The driver alone writes results (``episodes.jsonl``, manifests, episode files), so
what a run leaves behind and how it resumes do not depend on which machine did the work. A runner is
that map; the loops take one and never learn which backend they are on.

On Ray, each worker is an actor: one long-lived process, so the module-level caches a worker
function keeps (the evaluation's simulators) survive from job to job exactly as in a process pool.
An actor that dies (its process killed, its node lost) is replaced and its job run again; only after
``retries`` such losses is the job handed to ``lost``, which turns it into an error row. A lost
machine is never a policy failure.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..jobs import ConfigError

J = TypeVar("J")
R = TypeVar("R")

# The environment every worker gets, whatever node it lands on: headless MuJoCo rendering.
WORKER_ENV_VARS = {"MUJOCO_GL": "egl"}


class RayUnavailable(ConfigError):
    """``--ray`` was asked for but Ray is not installed, or the cluster cannot be reached."""


class JobRunner(Protocol):
    """Applies ``fn`` to every job, yielding results as they finish (any order)."""

    workers: int

    def map_unordered(
        self, fn: Callable[[J], R], jobs: Sequence[J], lost: Callable[[J, str], R] | None = None
    ) -> Iterator[R]: ...


@dataclass
class ProcessRunner:
    """Spawned worker processes of this machine (the default backend); one worker runs in this process."""

    workers: int = 1

    def map_unordered(
        self, fn: Callable[[J], R], jobs: Sequence[J], lost: Callable[[J, str], R] | None = None
    ) -> Iterator[R]:
        if self.workers <= 1 or len(jobs) <= 1:
            yield from map(fn, jobs)
            return
        with mp.get_context("spawn").Pool(self.workers) as pool:
            yield from pool.imap_unordered(fn, jobs)


def import_ray():
    try:
        import ray  # noqa: PLC0415  (optional dependency: only --ray runs need it)
    except ImportError:
        raise RayUnavailable("--ray needs Ray: pip install 'fm-agent[ray]' (ray==2.60.0)") from None
    return ray


def ray_exceptions() -> tuple[type[BaseException], ...]:
    """What Ray raises when a worker, rather than the job's own code, went away."""
    exceptions = import_ray().exceptions
    names = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OutOfMemoryError")
    return tuple(getattr(exceptions, name) for name in names if hasattr(exceptions, name))


@contextmanager
def ray_cluster(address: str, cpus_needed: int = 1) -> Iterator[dict[str, float]]:
    """Connects to the cluster for the duration of a run; yields its resources.

    ``local`` starts a cluster on this machine (at least ``cpus_needed`` logical CPUs, so the
    simulator and server actors of one run always fit); ``auto`` joins the cluster the environment
    points to (``RAY_ADDRESS``, or one started with ``ray start`` here); anything else is a Ray
    address (``HOST:PORT`` or ``ray://HOST:PORT``). A connection that was already open (a test's, a
    notebook's) is used as it is and left open."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    runtime_env = {"env_vars": WORKER_ENV_VARS}
    if address not in ("local", "auto"):
        _probe(address)
    try:
        if address == "local":
            # Ray runs workers at niceness 15 by default; here they do the run's work (simulators, the
            # server), and beside any other load they would lose the cores the process backend's get.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(
                num_cpus=max(os.cpu_count() or 1, cpus_needed),
                include_dashboard=False,
                runtime_env=runtime_env,
                log_to_driver=False,
            )
        else:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    except ConnectionError as error:
        hint = " (RAY_ADDRESS is unset and no cluster was started here)" if address == "auto" else ""
        raise RayUnavailable(f"--ray {address}: cannot reach a Ray cluster{hint}: {error}") from None
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


_JOB_ACTOR: Any = None


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fails fast on an address nothing listens on: Ray itself keeps retrying for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"--ray {address!r}: give local, auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise RayUnavailable(f"--ray {address}: nothing answers there ({error})") from None


def _job_actor_class():
    """The actor class, made remote once per process (``ray.remote`` needs Ray imported)."""
    global _JOB_ACTOR
    if _JOB_ACTOR is None:

        class JobWorker:
            """Runs jobs one after another in one process, so its module-level caches persist."""

            def run(self, fn: Callable[[Any], Any], job: Any) -> Any:
                return fn(job)

            def pid(self) -> int:
                return os.getpid()

        _JOB_ACTOR = import_ray().remote(JobWorker)
    return _JOB_ACTOR


@dataclass
class RayRunner:
    """``workers`` Ray actors of ``cpus`` logical CPUs each; a lost actor's job is retried on a fresh one.

    ``on_start`` (tests, progress) is called with each actor handle as it is created."""

    workers: int = 1
    cpus: float = 1.0
    retries: int = 2
    on_start: Callable[[Any], None] | None = None
    restarts: int = field(default=0, init=False)  # actors replaced after a loss, this run

    def _actor(self) -> Any:
        actor = _job_actor_class().options(num_cpus=self.cpus, max_restarts=0, max_task_retries=0).remote()
        if self.on_start is not None:
            self.on_start(actor)
        return actor

    def map_unordered(
        self, fn: Callable[[J], R], jobs: Sequence[J], lost: Callable[[J, str], R] | None = None
    ) -> Iterator[R]:
        ray = import_ray()
        gone = ray_exceptions()
        queue: deque[tuple[J, int]] = deque((job, 0) for job in jobs)
        idle = [self._actor() for _ in range(min(self.workers, len(queue)))]
        pending: dict[Any, tuple[Any, J, int]] = {}
        try:
            while queue or pending:
                while idle and queue:
                    actor = idle.pop()
                    job, losses = queue.popleft()
                    pending[actor.run.remote(fn, job)] = (actor, job, losses)
                (ready, *_), _ = ray.wait(list(pending), num_returns=1)
                actor, job, losses = pending.pop(ready)
                try:
                    result = ray.get(ready)
                except gone as error:  # the worker or its node went away: not the job's fault
                    ray.kill(actor, no_restart=True)
                    self.restarts += 1
                    if queue or losses < self.retries:
                        idle.append(self._actor())
                    if losses < self.retries:
                        queue.appendleft((job, losses + 1))
                        continue
                    if lost is None:
                        raise
                    yield lost(job, f"worker lost {losses + 1} times: {type(error).__name__}: {error}"[:500])
                    continue
                idle.append(actor)
                yield result
        finally:
            for actor, *_ in pending.values():
                ray.kill(actor, no_restart=True)
            for actor in idle:
                ray.kill(actor, no_restart=True)


@contextmanager
def job_runner(workers: int, ray: str | None, cpus_needed: int | None = None) -> Iterator[JobRunner]:
    """``workers`` processes here, or (``ray`` given: its address) as many Ray actors, for one run;
    ``cpus_needed``: what a local cluster must hold besides (default: the workers)."""
    if ray is None:
        yield ProcessRunner(workers)
        return
    with ray_cluster(ray, cpus_needed or workers):
        yield RayRunner(workers)
