"""The server under hostile and unlucky conditions: every size bounded, faults kept with their owner,
cancelled work skipped, a stalled model reported by health, a busy port refused, garbage answered
with INVALID_ARGUMENT and internal faults with an opaque id."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image as PILImage
from serving_helpers import INSTRUCTION, InProcessServer, frame, start_server, tiny_checkpoint

from fm_agent.model import VLAPolicy, fit_image
from fm_agent.serving.limits import Limits
from fm_agent_client import PolicyClient, encode_image, pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def server(checkpoint):
    process = start_server(checkpoint, "--max-image-pixels", "4096")
    yield process
    assert process.stop() == 0


@pytest.fixture()
def client(server):
    with PolicyClient(server.address, timeout=20, retries=0) as c:
        yield c


def health_of(address: str, timeout: float = 5) -> int:
    with grpc.insecure_channel(address) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout).status
        )


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def png_bytes(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- limits ----------------------------------------------------------------------------------------
def test_every_request_size_is_bounded_and_the_message_names_the_limit(client, server) -> None:
    info = client.info()
    assert info.limits.max_image_pixels == 4096 and info.limits.max_instruction_chars == 2048
    assert 0 < info.limits.max_instruction_words < 512
    cases = {
        "max_instruction_chars": lambda: client.start_episode("go " * 400_000),  # 1.2 MB
        "max_instruction_words": lambda: client.start_episode(
            " ".join(["a"] * (info.limits.max_instruction_words + 1))
        ),
        "merge_slots": lambda: client.start_episode(INSTRUCTION, mask="Mf", merge=True, merge_slots=4294967295),
        "merge_kernel": lambda: client.start_episode(INSTRUCTION, mask="Mf", merge=True, merge_kernel=10**6),
    }
    for limit, call in cases.items():
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and limit in error.details(), (limit, error.details())
    assert client.start_episode(" ".join(["a"] * info.limits.max_instruction_words))  # the limit itself is fine

    episode = client.start_episode(INSTRUCTION)
    bomb = png_bytes(3000, 3000)  # a few KB that would decode to 27 MB
    assert len(bomb) < 200_000
    for image in (
        pb.Image(camera="agentview", encoding=pb.Image.PNG, data=bomb),
        pb.Image(camera="agentview", height=100, width=100, data=bytes(30_000)),
    ):
        request = pb.ActRequest(
            episode_id=episode,
            observation=pb.Observation(images=[image, encode_image("wrist", frame(0)["wrist"])], proprio=[0.0] * 8),
        )
        error = rpc_error(lambda: client.stub.Act(request, timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_image_pixels" in error.details()
    long_id = rpc_error(lambda: client.act("x" * 100_000, frame(0), np.zeros(8)))
    assert long_id.code() == grpc.StatusCode.NOT_FOUND and len(long_id.details()) < 300  # not echoed whole
    assert health_of(server.address) == SERVING
    assert client.act(episode, frame(0), np.zeros(8)).step == 0, "refused requests left the episode untouched"


def test_cameras_of_any_size_are_fitted_on_arrival(client, checkpoint) -> None:
    """Differing camera sizes and a resolution change mid-episode are served; the history holds fitted frames."""
    rng = np.random.default_rng(3)
    sent = [
        {
            "agentview": rng.integers(0, 256, (48, 40, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        },
        {
            "agentview": rng.integers(0, 256, (24, 24, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (60, 32, 3), dtype=np.uint8),
        },
        frame(9),
    ]
    episode = client.start_episode(INSTRUCTION, mask="Mf", merge=True)
    twin = client.start_episode(INSTRUCTION, mask="Mf", merge=True)
    for f in sent:
        fitted = {c: fit_image(image, 16) for c, image in f.items()}
        got = client.act(episode, f, np.zeros(8)).actions
        assert np.array_equal(got, client.act(twin, fitted, np.zeros(8)).actions)
    assert all(image.shape == (16, 16, 3) for f in sent for image in map(lambda i: fit_image(i, 16), f.values()))


# -- faults, cancellation, liveness (a server in this process, so the test can steer its model) ------
@pytest.fixture()
def policy(checkpoint):
    return VLAPolicy.from_pretrained(checkpoint)


def test_one_faulty_request_in_a_batch_fails_alone(policy, caplog) -> None:
    unk = policy.tokenizer.unk_token_id
    real = policy.predict_prepared

    def fragile(observations, spec=None):  # a forward that a single member of the batch breaks
        if any(unk in o.prompt for o in observations):
            raise RuntimeError("allocator says: cannot allocate 34359738368 bytes")
        return real(observations, spec)

    policy.predict_prepared = fragile
    with (
        InProcessServer(policy, batch_window_ms=400, grace_s=1) as server,
        PolicyClient(server.address, timeout=20, retries=0) as c,
    ):
        episodes = [c.start_episode(INSTRUCTION) for _ in range(3)] + [c.start_episode("zebra crossing")]
        outcomes: dict[int, object] = {}

        def act(i: int) -> None:
            try:
                outcomes[i] = c.act(episodes[i], frame(i), np.zeros(8))
            except grpc.RpcError as error:
                outcomes[i] = error

        with caplog.at_level(logging.ERROR, logger="fm_agent.server"):
            threads = [threading.Thread(target=act, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        for i in range(3):
            assert outcomes[i].step == 0, f"valid request {i} failed with its neighbour: {outcomes[i]}"
        error = outcomes[3]
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.INTERNAL
        assert "error id" in error.details() and "allocator" not in error.details()
        error_id = error.details().split("error id ")[1].split(")")[0]
        assert any(error_id in r.getMessage() for r in caplog.records), "the log line carries the same id"
        assert health_of(server.address) == SERVING


def test_a_cancelled_step_never_runs_and_shifts_no_draws(policy) -> None:
    gate, calls, real = threading.Event(), [], policy.predict_prepared

    def gated(observations, spec=None):
        calls.append(len(observations))
        gate.wait(30)
        return real(observations, spec)

    policy.predict_prepared = gated
    with InProcessServer(policy, grace_s=1) as server, PolicyClient(server.address, timeout=20, retries=0) as c:
        blocker = c.start_episode(INSTRUCTION)
        thread = threading.Thread(target=lambda: c.act(blocker, frame(0), np.zeros(8)))
        thread.start()
        while not calls:
            time.sleep(0.01)
        episode = c.start_episode(INSTRUCTION, seed=11, temperature=5.0)
        with PolicyClient(server.address, timeout=0.3, retries=0) as hasty:
            assert (
                rpc_error(lambda: hasty.act(episode, frame(1), np.zeros(8))).code() == grpc.StatusCode.DEADLINE_EXCEEDED
            )
        gate.set()
        thread.join(30)
        deadline = time.monotonic() + 10
        while server.servicer.worker.dropped < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.servicer.worker.dropped == 1 and calls == [1], "the cancelled request was dropped unrun"
        twin = c.start_episode(INSTRUCTION, seed=11, temperature=5.0)
        for s in range(3):
            a, b = c.act(episode, frame(10 + s), np.zeros(8)), c.act(twin, frame(10 + s), np.zeros(8))
            assert a.step == b.step == s and np.array_equal(a.actions, b.actions)


def test_health_reports_a_stalled_worker_and_recovers(policy) -> None:
    gate, real = threading.Event(), policy.predict_prepared
    policy.predict_prepared = lambda observations, spec=None: (gate.wait(30), real(observations, spec))[1]
    with (
        InProcessServer(policy, grace_s=1, limits=Limits(stall_timeout_s=0.5)) as server,
        PolicyClient(server.address, timeout=20, retries=0) as c,
    ):
        episode = c.start_episode(INSTRUCTION)
        thread = threading.Thread(target=lambda: c.act(episode, frame(0), np.zeros(8)))
        thread.start()
        deadline = time.monotonic() + 10
        while health_of(server.address) == SERVING and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health_of(server.address) == NOT_SERVING
        other = c.start_episode(INSTRUCTION)
        started = time.monotonic()
        assert rpc_error(lambda: c.act(other, frame(0), np.zeros(8))).code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 5, "fails fast instead of queueing"
        gate.set()
        thread.join(30)
        while health_of(server.address) != SERVING and time.monotonic() < deadline + 10:
            time.sleep(0.1)
        assert health_of(server.address) == SERVING
        assert c.act(other, frame(0), np.zeros(8)).step == 0


def test_the_event_loop_stays_free_while_a_request_is_decoded(policy) -> None:
    with InProcessServer(policy, grace_s=1) as server, PolicyClient(server.address, timeout=20, retries=0) as c:
        real = server.servicer._prepare

        def slow_prepare(request, episode):  # stands in for decoding a very large image
            time.sleep(1.5)
            return real(request, episode)

        server.servicer._prepare = slow_prepare
        episode = c.start_episode(INSTRUCTION)
        thread = threading.Thread(target=lambda: c.act(episode, frame(0), np.zeros(8)))
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert health_of(server.address) == SERVING
        assert time.monotonic() - started < 1.0, "health waited for the decode"
        thread.join(30)


def test_queue_bound_refuses_at_once(policy) -> None:
    gate, real = threading.Event(), policy.predict_prepared
    policy.predict_prepared = lambda observations, spec=None: (gate.wait(30), real(observations, spec))[1]
    with (
        InProcessServer(policy, grace_s=1, max_batch=1, limits=Limits(max_queued_requests=2)) as server,
        PolicyClient(server.address, timeout=20, retries=0) as c,
    ):
        episodes = [c.start_episode(INSTRUCTION) for _ in range(3)]
        threads = [threading.Thread(target=lambda e=e: c.act(e, frame(0), np.zeros(8))) for e in episodes[:2]]
        for t in threads:
            t.start()
        while server.servicer.worker.pending < 2:
            time.sleep(0.01)
        error = rpc_error(lambda: c.act(episodes[2], frame(0), np.zeros(8)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queued_requests" in error.details()
        gate.set()
        for t in threads:
            t.join(30)
        assert c.act(episodes[2], frame(0), np.zeros(8)).step == 0


# -- the wire -------------------------------------------------------------------------------------
def test_garbage_bytes_get_invalid_argument_without_a_traceback(server) -> None:
    garbage = b"\xff\xff\xff\xff\x0f garbage"
    with grpc.insecure_channel(server.address) as channel:
        for method in ("GetInfo", "StartEpisode", "EndEpisode", "Act"):
            call = channel.unary_unary(f"/fm_agent.v1.PolicyService/{method}")
            error = rpc_error(lambda: call(garbage, timeout=10))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in error.details(), method
        stream = channel.stream_stream("/fm_agent.v1.PolicyService/StreamAct")
        error = rpc_error(lambda: list(stream(iter([garbage]), timeout=10)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert health_of(server.address) == SERVING
    assert not any("Traceback" in line or "DecodeError" in line for line in server.log)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_v1_and_v1alpha(server, version: str) -> None:
    import importlib

    messages = importlib.import_module("grpc_reflection.v1alpha.reflection_pb2")
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=messages.ServerReflectionRequest.SerializeToString,
            response_deserializer=messages.ServerReflectionResponse.FromString,
        )
        requests = [
            messages.ServerReflectionRequest(list_services=""),
            messages.ServerReflectionRequest(file_containing_symbol="fm_agent.v1.PolicyService"),
        ]
        listed, described = list(call(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "fm_agent.v1.PolicyService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert described.file_descriptor_response.file_descriptor_proto, "the service's schema is served"


def test_a_busy_port_is_an_error_at_start(server, checkpoint) -> None:
    port = server.address.rsplit(":", 1)[1]
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "fm_agent.cli",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--port",
            port,
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2 and "in use" in second.stderr, second.stderr[-2000:]
    assert health_of(server.address) == SERVING


def test_soak_benchmark_runs_and_reports(checkpoint, tmp_path) -> None:
    """The soak script end to end, briefly: valid traffic never fails, hostile traffic is refused as such."""
    from fm_agent.profiling.config import SoakConfig
    from fm_agent.profiling.soak import format_report, run_soak

    report = run_soak(
        SoakConfig(checkpoint=checkpoint, episodes=2, seconds=3, bad_fraction=0.5, image_size=32, out=tmp_path)
    )
    assert report["valid"]["ok"] > 0 and report["valid"]["failed"] == {}
    assert report["bad"]["sent"] > 0 and report["bad"]["not_a_client_error"] == {}
    assert report["health"]["not_serving"] == {} and report["health"]["latency_ms"]["n"] > 0
    assert report["server_rss_mb"]["after"] > 0 and report["server_rss_mb"]["timeline"]
    assert "RPCs" in format_report(report)
