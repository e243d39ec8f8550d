"""The evaluation loop end to end against a real local policy server."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from serving_helpers import TINY, tiny_checkpoint  # noqa: E402

from fm_agent.cli import main as cli  # noqa: E402
from fm_agent.model import ActionTokenizer, VLAConfig, VLAPolicy  # noqa: E402

pytestmark = [pytest.mark.simulator, pytest.mark.slow]  # episodes against a real server


@pytest.fixture(scope="module")
def babyai_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("babyai_policy")
    config = VLAConfig(
        env_family="babyai",
        cameras=["image"],
        image_size=16,
        history=2,
        action_tokenizer=ActionTokenizer.discrete(7).to_dict(),
        backbone=TINY,
    )
    VLAPolicy.create(config, ["go to the red ball, then open a door"], seed=0).save_pretrained(folder)
    return folder


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_alfred_eval_end_to_end_and_resume(babyai_checkpoint, tmp_path) -> None:
    argv = [
        "eval-babyai",
        "--checkpoint",
        str(babyai_checkpoint),
        "--episodes",
        "2",
        "--masks",
        "causal",
        "Mf+merge",
        "--max-steps",
        "6",
        "--image-size",
        "16",
        "--videos",
        "1",
        "--workers",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert cli(argv) == 0
    lines = sorted(read_lines(tmp_path / "episodes.jsonl"), key=lambda l: (l["mask"] != "causal", l["episode"]))
    assert len(lines) == 4 and {l["mask"] for l in lines} == {"causal", "Mf+merge"}
    assert all(l["error"] is None and 1 <= l["steps"] <= 6 and len(l["policy_ms"]) == l["steps"] for l in lines)
    assert lines[0]["seed"] == lines[2]["seed"], "a sweep replays the same episodes under every mask"
    summary = json.loads((tmp_path / "summary.json").read_text())
    causal = summary["masks"]["causal"]
    assert causal["overall"]["episodes"] == 2 and "by_num_subgoals" in causal
    assert {"prefill_ms", "queue_ms", "server_ms", "policy_round_trip", "env_step"} <= set(causal["latency_ms"])
    assert summary["versions"]["minigrid"] and "fm-agent eval-babyai" in summary["command"]
    assert (tmp_path / "summary.png").stat().st_size > 10_000
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 2
    assert cli(argv) == 0  # resume: nothing left to run
    assert len(read_lines(tmp_path / "episodes.jsonl")) == 4


def test_libero_eval_short_episode(tmp_path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "policy")
    argv = [
        "eval-libero",
        "--checkpoint",
        str(checkpoint),
        "--suite",
        "libero_spatial",
        "--tasks",
        "0",
        "--init-states",
        "3",
        "--max-steps",
        "4",
        "--out",
        str(tmp_path / "run"),
    ]
    assert cli(argv) == 0
    (line,) = read_lines(tmp_path / "run" / "episodes.jsonl")
    assert line["error"] is None and line["steps"] == 4 and line["init_state"] == 3 and not line["success"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["masks"]["causal"]["per_env"]["libero:libero_spatial/0"]["episodes"] == 1
    assert summary["versions"]["robosuite"] == "1.4.0" and summary["tasks"] == [0]


def test_a_killed_server_is_restarted_and_the_episode_retried(babyai_checkpoint, tmp_path) -> None:
    from envs import make_env
    from fm_agent.evaluation.harness import EpisodeJob, run_jobs
    from fm_agent.serving.local import LocalServer

    server = LocalServer(babyai_checkpoint, threads=1)
    address = server.start()
    try:
        job = EpisodeJob("causal", "babyai:BabyAI-GoToLocal-v0", 0, 5, None)
        first = run_jobs([job], address, lambda n: make_env(n, image_size=16), tmp_path, None, 0, 3, server.restart, 1)
        assert first[0]["error"] is None
        server.process.send_signal(signal.SIGKILL)  # the server dies between episodes
        server.process.wait()
        rows = run_jobs(
            [EpisodeJob("causal", "babyai:BabyAI-GoToLocal-v0", 1, 6, None)],
            address,
            lambda n: make_env(n, image_size=16),
            tmp_path,
            None,
            0,
            3,
            server.restart,
            1,
        )
        assert rows[0]["error"] is None and rows[0]["steps"] == 3 and server.alive()
        no_retry = LocalServer(babyai_checkpoint, threads=1)
        dead = no_retry.start()
        no_retry.process.send_signal(signal.SIGKILL)
        no_retry.process.wait()
        rows = run_jobs(
            [EpisodeJob("causal", "babyai:BabyAI-GoToLocal-v0", 2, 7, None)],
            dead,
            lambda n: make_env(n, image_size=16),
            tmp_path,
            None,
            0,
            3,
            None,
            0,
        )
        assert rows[0]["error"] and not rows[0]["success"], "recorded as an error, not a policy failure"
    finally:
        server.stop()


def test_summary_reports_how_long_successful_episodes_took() -> None:
    from fm_agent.evaluation.rollout import EpisodeResult, summarise

    results = [
        EpisodeResult("e", i, i, success, steps)
        for i, (success, steps) in enumerate([(True, 10), (True, 30), (False, 150), (True, 20)])
    ]
    overall = summarise(results)["overall"]
    assert overall["successes"] == 3
    assert overall["steps_to_success"]["p50"] == 20 and overall["steps_to_success"]["mean"] == 20
    assert summarise(results[2:3])["overall"]["steps_to_success"] == {}
    within = summarise(results, within=(10, 25, 150))["overall"]["successes_within"]
    assert within == {"10": 1, "25": 2, "150": 3}  # the failed 150-step episode never counts


def test_random_baseline_replays_with_its_seed_and_runs_from_the_cli(tmp_path) -> None:
    from envs import make_env
    from fm_agent.evaluation.rollout import RandomActor, run_episode

    env = make_env("babyai:BabyAI-OpenDoorsOrderN4-v0", image_size=16)

    def actions(seed: int) -> list[int]:
        actor = RandomActor(env.action_space)
        actor.start_episode("", seed)
        return [int(actor.act({})[0][0]) for _ in range(30)]

    try:
        assert actions(5) == actions(5) != actions(6)
        assert set(actions(5)) <= set(range(7))
        assert run_episode(env, RandomActor(env.action_space), "e", 0, 5, max_steps=30).steps <= 30
    finally:
        env.close()
    assert (
        cli(
            [
                "eval-local",
                "--random-baseline",
                "--env",
                "babyai:BabyAI-OpenDoorsOrderN4-v0",
                "--episodes",
                "2",
                "--max-steps",
                "20",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["masks"]["random"]["overall"]["episodes"] == 2
    # neither a checkpoint nor the baseline: refused before anything runs
    assert cli(["eval-local", "--env", "babyai:BabyAI-OpenDoorsOrderN4-v0"]) == 2


def test_a_worker_keeps_its_two_latest_simulators(monkeypatch) -> None:
    from fm_agent.evaluation import harness  # noqa: PLC0415

    class Sim:
        def __init__(self, name: str, **kwargs) -> None:
            self.name, self.kwargs, self.closed = name, kwargs, False

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(harness, "make_env", Sim)
    harness.close_worker_envs()
    a = harness._worker_env("task/0", {"image_size": 64})
    assert harness._worker_env("task/0", {"image_size": 64}) is a  # reused, not rebuilt
    b = harness._worker_env("task/0", {"image_size": 128})  # other settings: another simulator
    assert b is not a and b.kwargs == {"image_size": 128}
    harness._worker_env("task/0", {"image_size": 64})  # a is the most recent again
    c = harness._worker_env("task/1", {"image_size": 64})
    assert b.closed and not a.closed and not c.closed  # at most two kept: the least recent went
    harness._drop_worker_env("task/1", {"image_size": 64})
    assert c.closed and harness._worker_env("task/1", {"image_size": 64}) is not c  # a failed one is rebuilt
    harness.close_worker_envs()
    assert a.closed


def test_compare_tables_and_plots_summaries(tmp_path) -> None:
    from fm_agent.evaluation.compare import run_compare  # noqa: PLC0415
    from fm_agent.evaluation.config import CompareConfig  # noqa: PLC0415
    from fm_agent.jobs import ConfigError  # noqa: PLC0415

    results = Path(__file__).resolve().parents[2] / "docs" / "results" / "babyai_mask_trained"
    out = tmp_path / "cmp.png"
    config = CompareConfig(
        summaries=(results / "trained_mf.json", results / "trained_mv2t.json"), labels=("Mf", "Mv2t"), out=out
    )
    assert run_compare(config) == 0 and out.stat().st_size > 0
    table = out.with_suffix(".md").read_text().splitlines()
    assert "| Mf | Mf | 131/200 (59-72 %) | 0 |" in table and len(table) == 6
    with pytest.raises(ConfigError, match="one per summary"):
        CompareConfig(summaries=(results / "trained_mf.json",), labels=("a", "b")).validate()


def test_compare_draws_success_against_a_number_per_summary(tmp_path) -> None:
    from fm_agent.evaluation.compare import run_compare  # noqa: PLC0415
    from fm_agent.evaluation.config import CompareConfig  # noqa: PLC0415
    from fm_agent.jobs import ConfigError  # noqa: PLC0415

    sweep = Path(__file__).resolve().parents[2] / "docs" / "results" / "libero_spatial_sweep.json"
    out = tmp_path / "curve.png"
    config = CompareConfig(
        summaries=(sweep, sweep), labels=("a", "b"), masks=("causal",), x=(504, 50), x_label="episodes", out=out
    )
    assert run_compare(config) == 0 and out.stat().st_size > 0
    table = out.with_suffix(".md").read_text().splitlines()
    # the Mf+merge rows of the sweep are filtered out; x sits in its own column
    assert table[0] == "| run | episodes | evaluated under | success (95 % CI) | errors |"
    assert table[2] == "| a | 504 | causal | 2/50 (1-13 %) | 0 |" and len(table) == 4
    assert run_compare(CompareConfig(summaries=(sweep,), masks=("Mv2v",), out=out)) == 1  # no such rows
    with pytest.raises(ConfigError, match="--x: give one per summary"):
        CompareConfig(summaries=(sweep,), x=(1, 2)).validate()
    with pytest.raises(ConfigError, match="positive"):
        CompareConfig(summaries=(sweep,), x=(0,), log_x=True).validate()


def test_compare_lists_motion_and_waits_of_chunk_executor_runs(tmp_path) -> None:
    from fm_agent.evaluation.compare import run_compare  # noqa: PLC0415
    from fm_agent.evaluation.config import CompareConfig  # noqa: PLC0415
    from fm_agent.jobs import ConfigError  # noqa: PLC0415

    runs = Path(__file__).resolve().parents[2] / "docs" / "results" / "chunk_executor_libero"
    out = tmp_path / "exec.png"
    config = CompareConfig(
        summaries=(runs / "open_loop.json", runs / "ensemble_prefetch2_20hz.json"), labels=("open", "ens"), out=out
    )
    assert run_compare(config) == 0 and out.stat().st_size > 0
    table = out.with_suffix(".md").read_text().splitlines()
    assert table[0].endswith("| action jerk | waits/ticks | mean wait | dropped | merged |")
    assert table[2] == "| open | causal | 1/10 (2-40 %) | 0 | 0.0790 | - | - | - | - |"  # no executor: no waits
    assert table[3] == "| ens | causal | 0/10 (0-28 %) | 0 | 0.0717 | 777/2200 | 44 ms | 1310 | 0 |"
    with pytest.raises(ConfigError, match="give --x"):
        CompareConfig(summaries=(runs / "open_loop.json",), log_x=True).validate()
    with pytest.raises(ConfigError, match="give --x"):
        CompareConfig(summaries=(runs / "open_loop.json",), x_label="episodes").validate()


def test_libero_mask_sweep_summary_repeats_the_earlier_sweep_task_for_task() -> None:
    """The model card's training-free mask table rests on greedy evaluation being deterministic:
    the two arms that both sweeps ran must agree per task, not just in total."""
    results = Path(__file__).resolve().parents[2] / "docs" / "results"
    masks = json.loads((results / "libero_spatial_mask_sweep.json").read_text())["masks"]
    earlier = json.loads((results / "libero_spatial_sweep.json").read_text())["masks"]
    assert sorted(masks) == sorted(["causal", "Mf", "Mv2v", "Mv2t", "Mf+merge", "Mv2v+merge", "Mv2t+merge"])
    assert {m: s["overall"]["episodes"] for m, s in masks.items()} == dict.fromkeys(masks, 50)
    for mask in ("causal", "Mf+merge"):
        per_task = {env: s["successes"] for env, s in masks[mask]["per_env"].items()}
        assert per_task == {env: s["successes"] for env, s in earlier[mask]["per_env"].items()}
