"""The Ray backend on a local cluster: the same episodes, outcomes and files as the process backend;
workers that keep their state across jobs; a lost worker retried, never counted as a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envs.recording import RecordSettings, episode_path, read_episode, record
from fm_agent.data.config import DaggerConfig
from fm_agent.data.jobs import run_dagger
from fm_agent.distributed.runners import ProcessRunner, RayRunner, ray_cluster
from fm_agent.evaluation.config import BabyAIEvalConfig
from fm_agent.evaluation.harness import EpisodeJob, WorkerSettings, lost_worker_job
from fm_agent.evaluation.jobs import run_babyai_eval

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.simulator

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "checkpoints" / "babyai_opendoors"
LEVEL = "babyai:BabyAI-OpenDoorsOrderN4-v0"


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module (ray_cluster joins it instead of starting its own)."""
    os.environ.setdefault("RAY_worker_niceness", "0")
    tests = str(REPO / "tests")
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}},
    )
    yield
    ray.shutdown()


def test_workers_keep_their_state_and_lost_ones_are_retried(cluster, tmp_path) -> None:
    from ray_helpers import always_dies, counted, dies_once  # noqa: PLC0415  (tests/ on the path, as the workers have it)

    runs = sorted(RayRunner(workers=1).map_unordered(counted, list(range(4))))
    assert [calls for *_, calls in runs] == [1, 2, 3, 4] and len({pid for _, pid, _ in runs}) == 1

    runner = RayRunner(workers=2, retries=1)
    results = sorted(runner.map_unordered(dies_once, [(str(tmp_path), v) for v in range(4)]))
    assert results == [0, 10, 20, 30] and runner.restarts == 1  # job 2 ran again on a fresh worker

    given_up = RayRunner(workers=2, retries=1)
    rows = list(given_up.map_unordered(always_dies, [7], lost=lambda job, reason: ("lost", job, reason)))
    assert rows[0][:2] == ("lost", 7) and "lost 2 times" in rows[0][2] and given_up.restarts == 2


def test_a_lost_episode_is_an_error_row_not_a_failure() -> None:
    job = EpisodeJob("causal", LEVEL, 3, 1003, None)
    settings = WorkerSettings({}, Path("."), None, 0, None, 1, None, None, False)
    row, videos = lost_worker_job((job, "127.0.0.1:1", settings), "worker lost 3 times: ActorDiedError")
    assert row["key"] == job.key and row["error"].startswith("worker lost") and not videos


def _rows(folder: Path) -> dict[str, tuple]:
    rows = [json.loads(line) for line in (folder / "episodes.jsonl").read_text().splitlines()]
    return {r["key"]: (r["success"], r["steps"], r["error"], r["metadata"]) for r in rows}


@pytest.mark.slow
def test_babyai_evaluation_on_ray_matches_the_process_backend(cluster, tmp_path) -> None:
    common = dict(checkpoint=CHECKPOINT, levels=(LEVEL[len("babyai:") :],), episodes=3, max_steps=12, seed=4000)
    common |= dict(masks=("causal", "Mf+merge"), temperature=1.0, server_threads=1, workers=2)
    assert run_babyai_eval(BabyAIEvalConfig(**common, out=tmp_path / "processes")) == 0
    # the Ray servers decode on a static cache: the same sampled episodes as the default decode path
    ray_run = BabyAIEvalConfig(**common, ray="local", ray_servers=2, static_decode=True, out=tmp_path / "ray")
    assert run_babyai_eval(ray_run) == 0
    local, on_ray = _rows(tmp_path / "processes"), _rows(tmp_path / "ray")
    assert len(local) == 6 and local == on_ray
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["last_run"]["backend"] == "ray local" and summary["last_run"]["servers"] == 2
    assert summary["last_run"]["server_flags"] == ["--static-decode"]
    assert summary["last_run"]["server_device"] == "cpu" and summary["last_run"]["decode_path"] == "static"
    assert (
        summary["masks"]["causal"]["overall"]
        == json.loads((tmp_path / "processes" / "summary.json").read_text())["masks"]["causal"]["overall"]
    )


def test_recording_on_ray_writes_what_the_process_backend_writes(cluster, tmp_path) -> None:
    names = ["babyai:BabyAI-GoToLocal-v0"]
    with ray_cluster("local"):
        record(names, 4, RecordSettings(out=tmp_path / "ray"), runner=RayRunner(workers=2), chunk=2)
    record(names, 4, RecordSettings(out=tmp_path / "here"), runner=ProcessRunner(1), chunk=2)
    for index in range(4):
        a = read_episode(episode_path(tmp_path / "ray", names[0], index))
        b = read_episode(episode_path(tmp_path / "here", names[0], index))
        assert (a.actions == b.actions).all() and (a.observations["image"] == b.observations["image"]).all()
    rows = lambda folder: sorted((folder / "manifest.jsonl").read_text().splitlines())  # noqa: E731
    assert rows(tmp_path / "ray") == rows(tmp_path / "here")


@pytest.mark.slow
def test_dagger_on_ray_collects_what_the_process_backend_collects(cluster, tmp_path) -> None:
    common = dict(checkpoint=CHECKPOINT, env=LEVEL, episodes=2, max_steps=10, seed=900, temperature=1.0)
    assert run_dagger(DaggerConfig(**common, out=tmp_path / "ray", workers=2, ray="local")) == 0
    assert run_dagger(DaggerConfig(**common, out=tmp_path / "here")) == 0
    files = sorted(p.relative_to(tmp_path / "here") for p in (tmp_path / "here").rglob("*.h5"))
    assert len(files) == 2
    for path in files:
        a, b = read_episode(tmp_path / "ray" / path), read_episode(tmp_path / "here" / path)
        assert (a.actions == b.actions).all() and a.metadata == b.metadata


def test_an_unreachable_cluster_is_one_line_and_exit_2(tmp_path) -> None:
    command = [sys.executable, "-m", "fm_agent.cli", "eval-babyai", "--ray", "127.0.0.1:1", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2
    assert "--ray 127.0.0.1:1: nothing answers there" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "episodes.jsonl").exists()
