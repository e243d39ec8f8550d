"""The client against a real ``fm-agent serve`` of the embedded policy (see conftest.py)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from fm_agent_client import FutureMaskSpec, PolicyClient


def test_an_episode_under_a_merged_mask_returns_a_chunk_of_actions(server_address: str) -> None:
    with PolicyClient(server_address, retries=8, backoff_s=0.25) as client:
        info = client.info()
        cameras = [camera.name for camera in info.cameras]
        assert cameras == ["agentview", "wrist"] and info.proprio_dim == 8
        assert FutureMaskSpec.from_message(info.default_mask, FutureMaskSpec()).label == "causal"
        episode = client.start_episode("put the black bowl on the plate", mask="Mf+merge(k=2)", seed=1)
        frames = {camera: np.zeros((64, 64, 3), np.uint8) for camera in cameras}
        first = client.act(episode, frames, proprio=np.zeros(8, np.float32))
        second = client.act(episode, frames, proprio=np.zeros(8, np.float32))
        space = info.action_space
        assert first.actions.shape == (space.chunk, space.dims) and np.isfinite(first.actions).all()
        assert (space.low[0] <= first.actions[:, 0]).all() and (first.actions[:, 0] <= space.high[0]).all()
        assert (first.step, second.step) == (0, 1)
        assert client.end_episode(episode) == 2


def test_the_server_refuses_what_the_client_lets_through(server_address: str) -> None:
    with PolicyClient(server_address, retries=8, backoff_s=0.25) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.start_episode("put the bowl on the plate", mask="Mx")  # a bare kind is sent as given
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as missing:
            client.act("no-such-episode", {"agentview": np.zeros((64, 64, 3), np.uint8)})
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
