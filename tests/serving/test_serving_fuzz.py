"""Property-based: field values across the whole proto, and raw garbage, against a live loopback server.

For every generated request: the status is OK or a client-error class with a message, the server is
still SERVING, and a twin episode is unaffected: episode A receives the generated requests, episode B
(same instruction, seed and sampling) receives only those that A accepted, and both must give the
same actions for them, so a refused request can never have changed A's history or its draws.
"""

from __future__ import annotations

import io
import os

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from serving_helpers import INSTRUCTION, start_server, tiny_checkpoint

from fm_agent_client import PolicyClient, pb

CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}
CAMERAS = ("agentview", "wrist")
EXAMPLES = int(os.environ.get("FM_AGENT_FUZZ_EXAMPLES", "150"))
U32, U64 = 2**32 - 1, 2**64 - 1


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("policy"))
    server = start_server(checkpoint, "--max-image-pixels", "4096", "--max-message-mb", "1", "--max-episodes", "1000")
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 4 << 20)])
    with PolicyClient(server.address, timeout=20, retries=0) as client:
        a = client.start_episode(INSTRUCTION, seed=5, temperature=1.0)
        b = client.start_episode(INSTRUCTION, seed=5, temperature=1.0)
        yield server, channel, a, b
    channel.close()
    assert server.stop() == 0
    assert not any("Traceback" in line for line in server.log), "no request made the server log a traceback"


def png(height: int, width: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


sides = st.one_of(st.integers(1, 40), st.sampled_from([0, 64, 4096, 4097, U32]))


@st.composite
def images(draw) -> pb.Image:
    camera = draw(st.one_of(st.sampled_from(CAMERAS), st.text(max_size=12), st.just("x" * 5000)))
    kind = draw(st.sampled_from(["raw", "raw", "png", "png", "junk"]))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 1000))
    if kind == "raw":
        image = pb.Image(
            camera=camera,
            encoding=pb.Image.RAW,
            height=h,
            width=w,
            channels=3,
            data=np.random.default_rng(seed).integers(0, 256, h * w * 3, dtype=np.uint8).tobytes(),
        )
    elif kind == "png":
        image = pb.Image(camera=camera, encoding=pb.Image.PNG, data=png(h, w, seed))
    else:
        image = pb.Image(
            camera=camera, encoding=draw(st.sampled_from([0, 1, 2, 3, 77])), data=draw(st.binary(max_size=300))
        )
    for name, values in (
        ("height", sides),
        ("width", sides),
        ("channels", st.sampled_from([0, 1, 3, 4, U32])),
        ("dtype", st.one_of(st.sampled_from(["", "uint8", "float32", "uint16"]), st.text(max_size=8))),
        ("data", st.binary(max_size=64)),
    ):
        if draw(st.integers(0, 24)) == 0:  # now and then a field is off
            setattr(image, name, draw(values))
    return image


floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
valid_proprio = st.lists(st.floats(-2, 2, width=32), min_size=8, max_size=8)
proprio = st.one_of(valid_proprio, valid_proprio, st.lists(floats, max_size=12))


@st.composite
def act_requests(draw, episode_id: str) -> pb.ActRequest:
    ids = st.one_of(
        st.just(episode_id), st.just(episode_id), st.just(episode_id), st.text(max_size=40), st.just("e" * 20000)
    )
    observation = pb.Observation(
        images=draw(st.lists(images(), max_size=4)),
        proprio=draw(proprio),
        client_time=draw(st.floats(allow_nan=True, allow_infinity=True)),
    )
    if draw(st.booleans()):  # half the time: both cameras present, in order
        observation.ClearField("images")
        observation.images.extend([draw(images()) for _ in CAMERAS])
        for image, camera in zip(observation.images, CAMERAS):
            image.camera = camera
    return pb.ActRequest(episode_id=draw(ids), observation=observation)


mask_options = st.builds(
    pb.MaskOptions,
    mask=st.one_of(st.sampled_from(["", "causal", "Mf", "Mv2v", "Mv2t", "mf"]), st.text(max_size=30)),
    merge=st.booleans(),
    decode_mode=st.one_of(st.sampled_from(["", "prefill", "full"]), st.text(max_size=10)),
    merge_op=st.one_of(st.sampled_from(["", "max", "mean", "sum"]), st.text(max_size=10)),
    merge_kernel=st.one_of(st.integers(0, 8), st.integers(0, U32)),
    merge_slots=st.one_of(st.integers(0, 8), st.integers(0, U32)),
)


@st.composite
def start_requests(draw) -> pb.StartEpisodeRequest:
    instruction = draw(
        st.one_of(st.just(INSTRUCTION), st.text(max_size=200), st.just("a " * 3000), st.just("a " * 1000))
    )
    request = pb.StartEpisodeRequest(instruction=instruction, mask=draw(mask_options), seed=draw(st.integers(0, U64)))
    if draw(st.booleans()):
        request.temperature = draw(st.one_of(floats, st.floats(0, 2, width=32)))
    return request


garbage = st.tuples(
    st.sampled_from(["GetInfo", "StartEpisode", "EndEpisode", "Act"]),
    st.one_of(st.binary(max_size=200), st.just(b"\xff" * 64)),
)


def health_of(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def call(channel: grpc.Channel, method: str, payload: bytes) -> tuple[grpc.StatusCode, str, bytes]:
    try:
        reply = channel.unary_unary(f"/fm_agent.v1.PolicyService/{method}")(payload, timeout=20)
        return grpc.StatusCode.OK, "", reply
    except grpc.RpcError as error:
        return error.code(), error.details() or "", b""


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_request_gets_a_client_error_or_an_answer_and_harms_nobody(live, data) -> None:
    server, channel, twin_a, twin_b = live
    kind = data.draw(st.sampled_from(["act", "act", "act", "start", "end", "garbage"]), label="kind")
    if kind == "act":
        request = data.draw(act_requests(twin_a), label="act")
        method, payload = "Act", request.SerializeToString()
    elif kind == "start":
        method, payload = "StartEpisode", data.draw(start_requests(), label="start").SerializeToString()
    elif kind == "end":
        ended = pb.EndEpisodeRequest(episode_id=data.draw(st.text(max_size=40), label="id"))
        method, payload = "EndEpisode", ended.SerializeToString()
    else:
        method, payload = data.draw(garbage, label="garbage")
    code, details, reply = call(channel, method, payload)
    event(f"{method} -> {code.name}")
    assert code == grpc.StatusCode.OK or code in CLIENT_ERRORS, (code, details)
    assert code == grpc.StatusCode.OK or details.strip(), "every refusal says why"
    assert health_of(channel) == health_pb2.HealthCheckResponse.SERVING
    if code == grpc.StatusCode.OK and method == "StartEpisode":  # keep the store small
        episode_id = pb.StartEpisodeResponse.FromString(reply).episode_id
        call(channel, "EndEpisode", pb.EndEpisodeRequest(episode_id=episode_id).SerializeToString())
    if code == grpc.StatusCode.OK and method == "Act" and request.episode_id == twin_a:
        request.episode_id = twin_b
        code_b, details_b, reply_b = call(channel, "Act", request.SerializeToString())
        assert code_b == grpc.StatusCode.OK, details_b
        a, b = pb.ActResponse.FromString(reply), pb.ActResponse.FromString(reply_b)
        assert a.step == b.step and list(a.actions) == list(b.actions), "the twin episodes diverged"
