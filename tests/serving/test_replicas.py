"""Serving replicas: stateless episodes (ActStateless) behind client-side round-robin balancing.

A stateless step must equal the stateful step with the same settings, seed and frames; two replicas
behind one channel must carry an episode through the loss of either; a stateful episode behind a
balancer must fail with a status that says what to do, not hang.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest
from serving_helpers import INSTRUCTION, frame, start_server

from fm_agent.evaluation.config import BabyAIEvalConfig
from fm_agent.evaluation.jobs import run_babyai_eval
from fm_agent_client import AsyncPolicyClient, PolicyClient, StatelessEpisode, pb
from fm_agent_client.requests import act_request, start_request

STEPS = 8


def proprio(step: int) -> np.ndarray:
    return np.linspace(-0.5, 0.5, 8, dtype=np.float32) * (step % 3)


def stateful_actions(client: PolicyClient, mask: str, seed: int) -> list[np.ndarray]:
    episode = client.start_episode(INSTRUCTION, mask=mask, seed=seed, temperature=1.0)
    return [client.act(episode, frame(step), proprio(step)).actions for step in range(STEPS)]


@pytest.fixture(scope="module")
def replicas(tiny_policy):
    servers = [start_server(tiny_policy), start_server(tiny_policy)]
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.parametrize("mask", ["causal", "Mf+merge", "Mv2t/full"])
def test_a_stateless_step_equals_the_stateful_step(replicas, mask) -> None:
    with PolicyClient(replicas[0].address) as client:
        reference = stateful_actions(client, mask, seed=11)
        episode = StatelessEpisode(client, INSTRUCTION, mask, seed=11, temperature=1.0)
        stateless = [episode.act(frame(step), proprio(step)).actions for step in range(STEPS)]
    assert episode.step == STEPS and len(episode.frames) == 2  # the tiny policy's history
    for step, (want, got) in enumerate(zip(reference, stateless)):
        np.testing.assert_array_equal(got, want, err_msg=f"step {step}")
    assert len({a.tobytes() for a in reference}) > 1  # sampled actions that vary: the check has teeth


def test_the_asyncio_client_steps_a_stateless_episode_alike(replicas) -> None:
    with PolicyClient(replicas[0].address) as client:
        reference = stateful_actions(client, "Mf+merge", seed=13)

    async def run() -> list[np.ndarray]:
        async with AsyncPolicyClient(",".join(s.address for s in replicas)) as client:
            episode = StatelessEpisode(None, INSTRUCTION, "Mf+merge", seed=13, temperature=1.0, history=2)
            return [(await episode.act_async(client, frame(step), proprio(step))).actions for step in range(STEPS)]

    for step, (want, got) in enumerate(zip(reference, asyncio.run(run()))):
        np.testing.assert_array_equal(got, want, err_msg=f"step {step}")


def test_an_episode_survives_losing_a_replica(tiny_policy) -> None:
    servers = [start_server(tiny_policy), start_server(tiny_policy)]
    try:
        with PolicyClient(servers[0].address) as single:
            reference = stateful_actions(single, "Mf+merge", seed=5)
        balanced = PolicyClient(",".join(s.address for s in servers), timeout=20, retries=8, backoff_s=0.1)
        episode = StatelessEpisode(balanced, INSTRUCTION, "Mf+merge", seed=5, temperature=1.0)
        actions = []
        for step in range(STEPS):
            if step == STEPS // 2:
                servers[1].stop(signal.SIGKILL)  # mid-episode, no drain: in-flight and future calls fail over
            actions.append(episode.act(frame(step), proprio(step)).actions)
        balanced.close()
    finally:
        for server in servers:
            server.stop()
    for step, (want, got) in enumerate(zip(reference, actions)):
        np.testing.assert_array_equal(got, want, err_msg=f"step {step}")


def test_a_stateful_episode_behind_a_balancer_fails_with_a_clear_status(replicas) -> None:
    with PolicyClient(",".join(s.address for s in replicas), timeout=20) as client:
        episode = client.start_episode(INSTRUCTION, seed=1)
        with pytest.raises(grpc.RpcError) as raised:
            for step in range(6):  # round robin sends some step to the replica that never saw the episode
                client.act(episode, frame(step), proprio(step))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ActStateless" in raised.value.details()


def test_stateless_requests_are_bounded_and_checked(replicas) -> None:
    with PolicyClient(replicas[0].address, retries=0) as client:
        settings = start_request(INSTRUCTION, "causal", seed=3)
        frames = [act_request("", frame(i), proprio(i)).observation for i in range(3)]

        def status(request: pb.StatelessActRequest) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.RpcError) as raised:
                client.act_stateless(request)
            return raised.value.code(), raised.value.details()

        code, details = status(pb.StatelessActRequest(episode=settings, frames=frames))  # 3 > history 2
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "1 to 2 observations" in details
        code, details = status(pb.StatelessActRequest(episode=settings))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        empty = start_request("", "causal", seed=3)
        code, details = status(pb.StatelessActRequest(episode=empty, frames=frames[:1]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "instruction" in details
        no_proprio = pb.StatelessActRequest(episode=settings, frames=[act_request("", frame(0)).observation])
        code, details = status(no_proprio)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "proprio" in details
        ok = client.act_stateless(pb.StatelessActRequest(episode=settings, frames=frames[:2], step=4))
        assert ok.step == 4 and ok.actions.shape == (2, 7)


@pytest.mark.simulator
def test_an_evaluation_runs_stateless_over_replicas_as_it_runs_on_one_server(tmp_path) -> None:
    checkpoint = Path(__file__).resolve().parents[2] / "checkpoints" / "babyai_opendoors"
    servers = [start_server(checkpoint), start_server(checkpoint)]
    try:
        common = dict(episodes=3, max_steps=12, temperature=1.0, masks=("Mf+merge",), seed=77)
        one = BabyAIEvalConfig(**common, checkpoint=checkpoint, server=(servers[0].address,), out=tmp_path / "one")
        both = BabyAIEvalConfig(
            **common,
            checkpoint=checkpoint,
            server=tuple(s.address for s in servers),
            stateless=True,
            out=tmp_path / "both",
        )
        assert run_babyai_eval(one) == 0 and run_babyai_eval(both) == 0
    finally:
        for server in servers:
            server.stop()

    def outcomes(folder: Path) -> list[tuple]:
        rows = [json.loads(line) for line in (folder / "episodes.jsonl").read_text().splitlines()]
        return sorted((r["key"], r["success"], r["steps"], r["error"]) for r in rows)

    assert outcomes(tmp_path / "one") == outcomes(tmp_path / "both")
    last_run = json.loads((tmp_path / "both" / "summary.json").read_text())["last_run"]
    assert last_run["servers"] == 2 and last_run["decode_path"] == "exact"
