"""The gRPC policy service against a real server on loopback."""

from __future__ import annotations

import gc
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from paths import REPO
from serving_helpers import INSTRUCTION, frame, start_server, tiny_checkpoint

from fm_agent.attention import FutureMaskSpec, MergeOptions
from fm_agent.model import Observation, VLAPolicy
from fm_agent_client import PolicyClient, act_request, encode_act_request, encode_image, pb


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def server(checkpoint):
    process = start_server(checkpoint, "--max-episodes", "6", "--max-message-mb", "1")
    yield process
    assert process.stop() == 0


@pytest.fixture()
def client(server):
    with PolicyClient(server.address, timeout=20) as c:
        yield c


def health_status(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code()


def test_health_and_reflection(server) -> None:
    assert health_status(server.address) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "fm_agent.v1.PolicyService" in names and "grpc.health.v1.Health" in names


def test_info(client) -> None:
    info = client.info()
    assert [c.name for c in info.cameras] == ["agentview", "wrist"] and info.history == 2
    assert info.action_space.kind == "continuous" and info.action_space.dims == 7 and info.action_space.chunk == 2
    assert set(info.available_masks) == {"causal", "Mf", "Mv2v", "Mv2t"} and info.proprio_dim == 8
    assert info.default_temperature == 0.0
    assert info.device == "cpu" and info.decode_path == "exact"  # the fast step is the default


def test_sampled_episodes_replay_with_their_seed(client) -> None:
    def run(seed: int) -> list[np.ndarray]:
        episode = client.start_episode(INSTRUCTION, seed=seed, temperature=50.0)
        return [client.act(episode, frame(s), np.zeros(8)).actions for s in range(3)]

    first = run(7)
    assert all(np.array_equal(a, b) for a, b in zip(first, run(7)))
    assert not all(np.array_equal(a, b) for a, b in zip(first, run(8)))


def test_full_episode_act_and_stream(client, checkpoint) -> None:
    episode = client.start_episode(INSTRUCTION, mask="Mf", merge=True)
    steps = [client.act(episode, frame(s), np.zeros(8)) for s in range(4)]
    assert [s.step for s in steps] == [0, 1, 2, 3]
    assert all(s.actions.shape == (2, 7) and np.all(np.abs(s.actions) <= 1) for s in steps)
    latency = steps[-1].latency
    assert latency["server_ms"] >= latency["prefill_ms"] > 0 and latency["batch_size"] >= 1
    assert client.end_episode(episode) == 4

    episode = client.start_episode(INSTRUCTION, mask="Mf", merge=True)
    streamed = list(client.stream(act_request(episode, frame(s), np.zeros(8)) for s in range(4)))
    assert [r.step for r in streamed] == [0, 1, 2, 3]
    for a, b in zip(steps, streamed):
        assert np.array_equal(a.actions, b.actions), "same observations, same mask: same actions"
    client.end_episode(episode)


@pytest.mark.parametrize("driver", ["caller", "threaded"])
def test_control_loop_on_one_stream(client, driver) -> None:
    """Both ways of driving ``StreamAct`` (the caller's thread, grpcio's threads) give unary Act's steps."""
    episode = client.start_episode(INSTRUCTION, mask="Mf", merge=True)
    steps = [client.act(episode, frame(s), np.zeros(8)) for s in range(4)]
    client.end_episode(episode)
    episode = client.start_episode(INSTRUCTION, mask="Mf", merge=True)
    with client.open_stream(driver) as stream:
        assert stream.driver == driver
        looped = [stream.act(episode, frame(s), np.zeros(8)) for s in range(4)]
    assert [r.step for r in looped] == [0, 1, 2, 3]
    assert all(np.array_equal(a.actions, b.actions) for a, b in zip(steps, looped))
    with client.open_stream(driver) as stream:  # a rejected step ends the stream, not the episode
        for _ in range(2):  # and the ended stream keeps saying why
            with pytest.raises(grpc.RpcError) as error:
                stream.act(episode, {"agentview": np.zeros((8, 8, 3), np.uint8)}, np.zeros(8))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            if driver == "threaded":
                break  # grpcio's own stream raises StopIteration once it is over
        assert "wrist" in error.value.details() or "agentview" in error.value.details()
    assert client.act(episode, frame(4), np.zeros(8)).step == 4
    dropped = client.open_stream(driver)  # a stream dropped without close is cancelled, nothing else
    assert dropped.act(episode, frame(5), np.zeros(8)).step == 5
    del dropped
    gc.collect()
    with client.open_stream(driver) as stream:  # unknown episode: NOT_FOUND, as from unary Act
        with pytest.raises(grpc.RpcError) as error:
            stream.act("no-such-episode", frame(0), np.zeros(8))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    client.end_episode(episode)


def test_the_pinned_grpcio_streams_from_the_callers_thread(client) -> None:
    with client.open_stream() as stream:
        assert stream.driver == "caller"
    with pytest.raises(ValueError, match="driver"):
        client.open_stream("fast")


def test_asyncio_client_runs_an_episode_like_the_sync_client(server, client) -> None:
    import asyncio

    from fm_agent_client import AsyncPolicyClient

    async def episode_with_async_client() -> tuple[list, grpc.StatusCode]:
        async with AsyncPolicyClient(server.address, timeout=20) as aclient:
            assert (await aclient.info()).history == 2
            episode = await aclient.start_episode(INSTRUCTION, mask="Mv2t", seed=3)
            steps = [await aclient.act(episode, frame(s), np.zeros(8)) for s in range(3)]
            assert await aclient.end_episode(episode) == 3
            try:
                await aclient.act(episode, frame(0), np.zeros(8))
            except grpc.aio.AioRpcError as error:
                return steps, error.code()
            return steps, grpc.StatusCode.OK

    steps, ended = asyncio.run(episode_with_async_client())
    assert [s.step for s in steps] == [0, 1, 2] and ended == grpc.StatusCode.NOT_FOUND
    episode = client.start_episode(INSTRUCTION, mask="Mv2t", seed=3)
    for s, async_step in enumerate(steps):
        assert np.array_equal(client.act(episode, frame(s), np.zeros(8)).actions, async_step.actions)
    client.end_episode(episode)


def test_concurrent_episodes_keep_histories_and_masks_apart(server, checkpoint) -> None:
    """Same observations in episodes with different masks, interleaved across threads, give exactly the
    in-process model's actions under those masks."""
    policy = VLAPolicy.from_pretrained(checkpoint)
    masks = {
        "causal": FutureMaskSpec(),
        "Mf": FutureMaskSpec("Mf"),
        "Mv2t+merge": FutureMaskSpec("Mv2t", merge=MergeOptions()),
    }
    frames = [frame(100 + s) for s in range(4)]
    expected = {}
    for label, spec in masks.items():
        expected[label] = [
            policy.predict([Observation(frames[max(0, s - 1) : s + 1], INSTRUCTION, np.full(8, 0.1))], spec)[0].actions
            for s in range(4)
        ]
    results: dict[str, list] = {}

    def run(label: str) -> None:
        with PolicyClient(server.address) as c:
            spec = masks[label]
            episode = c.start_episode(INSTRUCTION, mask=spec.mask, merge=spec.merge is not None)
            results[label] = [c.act(episode, f, np.full(8, 0.1)).actions for f in frames]
            c.end_episode(episode)

    threads = [threading.Thread(target=run, args=(label,)) for label in masks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for label in masks:
        for got, want in zip(results[label], expected[label]):
            np.testing.assert_allclose(got, want, atol=1e-6)
    assert not all(np.array_equal(a, b) for a, b in zip(expected["causal"], expected["Mf"]))


def test_bad_inputs_get_specific_statuses_and_change_nothing(client, server) -> None:
    episode = client.start_episode(INSTRUCTION)
    first = client.act(episode, frame(1), np.zeros(8))
    good = frame(2)
    stub, bad = client.stub, grpc.StatusCode.INVALID_ARGUMENT

    def send(observation: pb.Observation, episode_id: str = episode):
        return stub.Act(pb.ActRequest(episode_id=episode_id, observation=observation), timeout=10)

    def images(**override) -> list:
        out = [encode_image("agentview", good["agentview"]), encode_image("wrist", good["wrist"])]
        for key, value in override.items():
            setattr(out[0], key, value)
        return out

    proprio = [0.0] * 8
    assert code_of(lambda: send(pb.Observation(images=images(height=17), proprio=proprio))) == bad  # wrong shape
    assert code_of(lambda: send(pb.Observation(images=images(dtype="float32"), proprio=proprio))) == bad
    assert code_of(lambda: send(pb.Observation(images=images(camera="top"), proprio=proprio))) == bad
    assert code_of(lambda: send(pb.Observation(images=images()[:1], proprio=proprio))) == bad  # missing camera
    assert (
        code_of(lambda: send(pb.Observation(images=images(encoding=pb.Image.PNG, data=b"not a png"), proprio=proprio)))
        == bad
    )
    assert code_of(lambda: send(pb.Observation(images=images(), proprio=[float("nan")] * 8))) == bad
    assert code_of(lambda: send(pb.Observation(images=images(), proprio=[0.0] * 3))) == bad
    assert code_of(lambda: send(pb.Observation(images=images(), proprio=proprio), "nope")) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: client.start_episode("")) == bad
    assert code_of(lambda: client.start_episode(INSTRUCTION, mask="Mx")) == bad
    assert code_of(lambda: client.start_episode(INSTRUCTION, temperature=-1.0)) == bad
    assert code_of(lambda: client.start_episode(INSTRUCTION, temperature=float("nan"))) == bad
    assert code_of(lambda: client.start_episode(INSTRUCTION, mask="Mf", merge=True, merge_op="sum")) == bad
    huge = {"agentview": np.zeros((700, 700, 3), np.uint8), "wrist": good["wrist"]}  # 1.5 MB > 1 MB limit
    assert code_of(lambda: client.act(episode, huge, np.zeros(8))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert health_status(server.address) == health_pb2.HealthCheckResponse.SERVING

    # the episode is exactly as if the bad requests never came: same step index, same history
    second = client.act(episode, good, np.zeros(8))
    assert second.step == first.step + 1
    twin = client.start_episode(INSTRUCTION)
    client.act(twin, frame(1), np.zeros(8))
    assert np.array_equal(client.act(twin, good, np.zeros(8)).actions, second.actions)
    png = client.act(twin, good, np.zeros(8), encoding="png")  # lossless encodings decode to the same pixels
    assert png.step == 2
    client.end_episode(episode)
    client.end_episode(twin)


def test_a_server_decoding_on_a_static_cache_acts_like_the_default(client, checkpoint) -> None:
    """``--static-decode`` (CUDA graphs on a GPU, eager here): the same actions, greedy and sampled, for
    episodes whose steps read their frames' cached features."""

    def run(c: PolicyClient, **options) -> list[np.ndarray]:
        episode = c.start_episode(INSTRUCTION, mask="Mf", merge=True, **options)
        actions = [c.act(episode, frame(s), np.full(8, 0.1 * s)).actions for s in range(4)]
        c.end_episode(episode)
        return actions

    server = start_server(checkpoint, "--static-decode")
    try:
        with PolicyClient(server.address, timeout=20) as static:
            assert static.info().decode_path == "static"  # eager on the CPU, "cuda-graphs" on a GPU
            for options in ({}, {"seed": 3, "temperature": 5.0}):
                assert all(np.array_equal(a, b) for a, b in zip(run(static, **options), run(client, **options)))
    finally:
        assert server.stop() == 0


def test_live_episode_cap(checkpoint) -> None:
    server = start_server(checkpoint, "--max-episodes", "2")
    try:
        with PolicyClient(server.address) as c:
            c.start_episode(INSTRUCTION)
            c.start_episode(INSTRUCTION)
            assert code_of(lambda: c.start_episode(INSTRUCTION)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop()


def test_idle_episodes_are_evicted(checkpoint) -> None:
    server = start_server(checkpoint, "--idle-timeout", "1")
    try:
        with PolicyClient(server.address) as c:
            episode = c.start_episode(INSTRUCTION)
            c.act(episode, frame(0), np.zeros(8))
            time.sleep(3.5)
            assert code_of(lambda: c.act(episode, frame(1), np.zeros(8))) == grpc.StatusCode.NOT_FOUND
    finally:
        assert server.stop() == 0
    assert any('"evicted"' in line for line in server.log)


def test_sigterm_drains_in_flight_requests(checkpoint) -> None:
    server = start_server(checkpoint, "--batch-window-ms", "800")  # each request waits 0.8 s for company
    with PolicyClient(server.address) as c:
        episode = c.start_episode(INSTRUCTION)
        box = {}
        thread = threading.Thread(target=lambda: box.setdefault("result", c.act(episode, frame(0), np.zeros(8))))
        thread.start()
        time.sleep(0.3)
        code = server.stop(signal.SIGTERM)
        thread.join(10)
    assert code == 0
    assert box["result"].step == 0, "the in-flight request finished"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_survives_a_server_restart(checkpoint) -> None:
    port = free_port()
    server = start_server(checkpoint, port=port)
    with PolicyClient(f"127.0.0.1:{port}", retries=12, backoff_s=0.25) as c:
        assert c.info().history == 2
        server.stop()
        box = {}
        thread = threading.Thread(target=lambda: box.setdefault("info", c.info()))  # retried while down
        thread.start()
        server = start_server(checkpoint, port=port)
        thread.join(60)
        assert box["info"].history == 2
        episode = c.start_episode(INSTRUCTION)
        assert c.act(episode, frame(0), np.zeros(8)).step == 0
    server.stop()


@pytest.mark.parametrize("side", [1, 5, 224, 300])  # 1-, 2- and 3-byte length prefixes
def test_act_request_bytes_are_the_act_request_message(side: int) -> None:
    rng = np.random.default_rng(side)
    wide = rng.integers(0, 256, (side, 2 * side, 3), dtype=np.uint8)
    images = {"agentview": wide[:, ::2], "wrist_é": rng.integers(0, 256, (side, side, 3), dtype=np.uint8)}
    for proprio in (None, np.arange(8, dtype=np.float64) / 3):
        expected = act_request("episode-1", images, proprio)
        decoded = pb.ActRequest.FromString(encode_act_request("episode-1", images, proprio))
        assert abs(decoded.observation.client_time - expected.observation.client_time) < 60
        decoded.observation.client_time = expected.observation.client_time
        assert decoded == expected
    png = pb.ActRequest.FromString(encode_act_request("e", images, encoding="png"))
    assert [i.encoding for i in png.observation.images] == [pb.Image.PNG, pb.Image.PNG]
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ValueError, match="agentview"):
            encode_act_request("e", {"agentview": bad})


def test_retry_policy_retries_only_unavailable_with_growing_jittered_waits() -> None:
    from fm_agent_client import RetryPolicy

    policy = RetryPolicy(retries=3, backoff_s=0.1)
    for attempt in range(3):
        wait = policy.delay(grpc.StatusCode.UNAVAILABLE, attempt)
        assert 0.05 * 2**attempt <= wait <= 0.1 * 2**attempt
    assert policy.delay(grpc.StatusCode.UNAVAILABLE, 3) is None  # retries spent
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED):
        assert policy.delay(code, 0) is None


def test_bearer_token(checkpoint) -> None:
    server = start_server(checkpoint, "--token", "s3cret")
    try:
        with PolicyClient(server.address, retries=0) as anonymous:
            assert code_of(anonymous.info) == grpc.StatusCode.UNAUTHENTICATED
        with PolicyClient(server.address, token="s3cret") as c:
            assert c.info().history == 2
            episode = c.start_episode(INSTRUCTION)
            with c.open_stream() as stream:  # the stream carries the token too
                assert stream.act(episode, frame(0), np.zeros(8)).step == 0
        with PolicyClient(server.address, retries=0) as anonymous, anonymous.open_stream() as stream:
            with pytest.raises(grpc.RpcError) as error:
                stream.act("any", frame(0), np.zeros(8))
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert health_status(server.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()


def test_client_imports_no_ml_stack() -> None:
    code = "import sys, fm_agent_client; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_generated_code_is_current(tmp_path) -> None:

    root = REPO
    subprocess.run(
        ["bash", str(root / "launch/gen_protos.sh"), str(tmp_path)],
        check=True,
        cwd=root,
        env={**__import__("os").environ, "PYTHON": sys.executable},
    )
    generated = [f"client/src/fm_agent_client/v1/policy_pb2{suffix}" for suffix in (".py", "_grpc.py", ".pyi")]
    generated += [f"fm_agent/v1/reflection_v1_pb2{suffix}" for suffix in (".py", "_grpc.py", ".pyi")]
    for name in generated:
        assert (tmp_path / name).read_text() == (root / name).read_text(), (
            f"{name} is stale: run bash launch/gen_protos.sh"
        )
