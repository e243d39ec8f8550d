"""openpi's websocket policy protocol, driven by the real openpi-client (PyPI openpi-client 0.1.2)."""

from __future__ import annotations

import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from serving_helpers import INSTRUCTION, InProcessServer, frame
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from fm_agent.model import VLAPolicy
from fm_agent_client import PolicyClient


@pytest.fixture(scope="module")
def server(tiny_policy):
    with InProcessServer(VLAPolicy.from_pretrained(tiny_policy), openpi_port=0) as running:
        yield running


def openpi_obs(seed: int, prompt: str = INSTRUCTION, state: np.ndarray | None = None) -> dict:
    """An observation as openpi's LIBERO example builds it: its keys, views rotated by 180 degrees.

    fm-agent's frames are the simulator's images flipped vertically (raw[::-1]); openpi rotates the
    raw image (raw[::-1, ::-1]), which is fm-agent's frame mirrored left-right."""
    images = frame(seed)
    return {
        "observation/image": np.ascontiguousarray(images["agentview"][:, ::-1]),
        "observation/wrist_image": np.ascontiguousarray(images["wrist"][:, ::-1]),
        "observation/state": np.linspace(-1, 1, 8) if state is None else state,
        "prompt": prompt,
    }


def client(server: InProcessServer, query: str = "") -> WebsocketClientPolicy:
    return WebsocketClientPolicy(f"ws://127.0.0.1:{server.server.openpi_port}/{query}")


def test_metadata_on_connect_and_actions_of_the_policys_shape(server) -> None:
    policy = client(server)
    metadata = policy.get_server_metadata()
    assert metadata["server"] == "fm-agent" and metadata["action_chunk"] == 2 and metadata["action_dims"] == 7
    assert metadata["device"] == "cpu" and metadata["decode_path"] == "exact"
    assert metadata["observation_keys"]["cameras"] == {
        "observation/image": "agentview",
        "observation/wrist_image": "wrist",
    }
    reply = policy.infer(openpi_obs(0))
    assert reply["actions"].shape == (2, 7) and reply["actions"].dtype == np.float32
    assert reply["fm_agent"]["step"] == 0 and reply["server_timing"]["infer_ms"] > 0


def test_a_connection_is_an_episode_with_the_grpc_episodes_history(server) -> None:
    """The same frames through openpi's client and through gRPC give the same actions step by step: the
    history is kept the same way (the openpi images are rotated; the default flip maps them back)."""
    policy = client(server)
    grpc_client = PolicyClient(server.address)
    episode = grpc_client.start_episode(INSTRUCTION)
    for seed in range(4):
        reply = policy.infer(openpi_obs(seed))
        expected = grpc_client.act(episode, frame(seed), np.linspace(-1, 1, 8))
        assert reply["fm_agent"]["step"] == seed
        np.testing.assert_array_equal(reply["actions"], np.asarray(expected.actions, np.float32))
    grpc_client.close()


def test_a_new_prompt_starts_a_new_episode_on_the_same_connection(server) -> None:
    policy = client(server)
    assert [policy.infer(openpi_obs(s))["fm_agent"]["step"] for s in range(3)] == [0, 1, 2]
    assert policy.infer(openpi_obs(3, prompt="pick up the bowl"))["fm_agent"]["step"] == 0
    assert policy.infer({**openpi_obs(4, prompt="pick up the bowl"), "reset": True})["fm_agent"]["step"] == 0


def test_bad_observations_are_errors_the_openpi_client_raises_and_lose_nothing(server) -> None:
    policy = client(server)
    assert policy.infer(openpi_obs(0))["fm_agent"]["step"] == 0
    bad = [
        {k: v for k, v in openpi_obs(1).items() if k != "observation/wrist_image"},
        {**openpi_obs(1), "observation/state": np.zeros(3)},
        {**openpi_obs(1), "observation/state": np.full(8, np.nan)},
        {**openpi_obs(1), "observation/image": np.zeros((5000, 4, 3), np.uint8)},
        {**openpi_obs(1), "observation/image": np.zeros((16, 16, 3), np.float32)},
        {**openpi_obs(1), "prompt": "word " * 5000},
        {**openpi_obs(1), "prompt": 7},
    ]
    for obs in bad:
        with pytest.raises(RuntimeError, match="INVALID_ARGUMENT"):
            policy.infer(obs)
    # the episode went on exactly where it was: the next valid step is step 1
    assert policy.infer(openpi_obs(1))["fm_agent"]["step"] == 1


def test_malformed_frames_are_refused_without_closing_the_connection(server) -> None:
    with connect(f"ws://127.0.0.1:{server.server.openpi_port}", max_size=None) as ws:
        msgpack_numpy.unpackb(ws.recv())  # metadata
        for payload in (
            b"\xc1not msgpack",
            msgpack.packb([1, 2, 3]),
            msgpack.packb({b"x": {b"__ndarray__": True, b"data": b"abc", b"dtype": "|O", b"shape": [3]}}),
            msgpack.packb({b"x": {b"__ndarray__": True, b"data": b"abc", b"dtype": "<f4", b"shape": [1000]}}),
        ):
            ws.send(payload)
            reply = ws.recv()
            assert isinstance(reply, str) and reply.startswith("INVALID_ARGUMENT"), reply
        ws.send("text")
        assert ws.recv().startswith("INVALID_ARGUMENT")
        ws.send(msgpack_numpy.packb(openpi_obs(0)))
        assert isinstance(ws.recv(), bytes)


def test_the_mask_comes_from_the_url(server) -> None:
    reply = client(server, "?mask=Mf%2Bmerge").infer(openpi_obs(0))
    assert reply["fm_agent"]["mask"] == "Mf+merge"
    with pytest.raises(InvalidStatus, match="400"):  # refused in the handshake, before any episode
        client(server, "?mask=Mx")


def test_healthz(server) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server.openpi_port}/healthz", timeout=10) as response:
        assert response.status == 200 and response.read() == b"OK\n"


def test_the_token_guards_the_websocket_but_not_health(tiny_policy) -> None:
    with InProcessServer(VLAPolicy.from_pretrained(tiny_policy), openpi_port=0, token="s3cret") as guarded:
        port = guarded.server.openpi_port
        with pytest.raises(InvalidStatus):
            WebsocketClientPolicy(f"ws://127.0.0.1:{port}")
        assert WebsocketClientPolicy(f"ws://127.0.0.1:{port}", api_key="s3cret").infer(openpi_obs(0))["actions"].shape
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200


@pytest.mark.simulator
@pytest.mark.slow
def test_a_libero_rollout_driven_the_way_openpis_libero_example_drives_one() -> None:
    """``fm-agent serve --openpi-port``, and a LIBERO episode stepped as openpi's examples/libero/main.py
    steps one: 256 px renders, both views rotated by 180 degrees and resized with padding to 224 by
    openpi's own image_tools, its observation keys, the 8-d state, a plan replanned every 5 steps."""
    import collections

    from openpi_client import image_tools
    from paths import REPO

    from envs import make_env
    from fm_agent.serving.local import LocalServer

    server = LocalServer(REPO / "checkpoints" / "libero_spatial", ("--openpi-port", "0"), threads=1)
    server.start()
    env = make_env("libero:libero_spatial/0", image_size=256)
    try:
        assert server.openpi_address is not None
        policy = WebsocketClientPolicy(f"ws://{server.openpi_address}")
        obs, _ = env.reset(options={"init_state": 10})
        plan: collections.deque = collections.deque()
        infers: list[int] = []
        steps = 0
        while steps < 40:
            steps += 1
            if not plan:
                raw = env.raw_observation
                views = [
                    np.ascontiguousarray(raw[key][::-1, ::-1])
                    for key in ("agentview_image", "robot0_eye_in_hand_image")
                ]
                image, wrist = (image_tools.convert_to_uint8(image_tools.resize_with_pad(v, 224, 224)) for v in views)
                reply = policy.infer(
                    {
                        "observation/image": image,
                        "observation/wrist_image": wrist,
                        "observation/state": obs["proprio"],
                        "prompt": str(obs["instruction"]),
                    }
                )
                infers.append(reply["fm_agent"]["step"])
                assert reply["actions"].shape == (4, 7) and np.all(np.abs(reply["actions"]) <= 1)
                plan.extend(reply["actions"][:5])
            obs, _, done, _, _ = env.step(plan.popleft())
            if done:
                break
        assert infers == list(range(len(infers))) and len(infers) == -(-steps // 4)  # one call per 4-action chunk
    finally:
        env.close()
        server.stop()
