"""A light client for the fm-agent policy server: grpcio, protobuf and numpy only (no torch).

    from fm_agent_client import PolicyClient

    with PolicyClient("127.0.0.1:50051") as client:
        episode = client.start_episode("put the bowl on the plate", mask="Mf+merge")
        actions = client.act(episode, {"agentview": rgb, "wrist": rgb2}, proprio=state).actions

Calls carry a deadline; ``UNAVAILABLE`` (server restarting, connection refused) is retried with
exponential backoff, and the channel reconnects by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from .masks import ALL_SPEC_LABELS, MASK_KINDS, FutureMaskSpec, MergeOptions
from .requests import act_request, encode_act_request, encode_image, mask_options, prebuilt, start_request
from .results import ActResult
from .stream import ActStream, StreamActError
from .v1 import policy_pb2 as pb
from .v1 import policy_pb2_grpc as pb_grpc

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


__all__ = [
    "ALL_SPEC_LABELS",
    "MASK_KINDS",
    "ActResult",
    "ActStream",
    "AsyncPolicyClient",
    "FutureMaskSpec",
    "MergeOptions",
    "PolicyClient",
    "RetryPolicy",
    "StreamActError",
    "act_request",
    "encode_act_request",
    "encode_image",
    "mask_options",
    "pb",
    "start_request",
]


@dataclass(frozen=True)
class RetryPolicy:
    """Only ``UNAVAILABLE`` is retried: the server is restarting or not up yet, and the request never
    reached a handler. Anything else (a rejected input, a lost episode) would fail again the same way."""

    retries: int = 5
    backoff_s: float = 0.1

    def delay(self, code: grpc.StatusCode, attempt: int) -> float | None:
        """Seconds to wait before another try after failed attempt ``attempt`` (0-based), or None: raise."""
        if code not in RETRYABLE or attempt >= self.retries:
            return None
        return self.backoff_s * (2**attempt) * (0.5 + random.random() / 2)  # exponential, with jitter


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_message_bytes), ("grpc.max_receive_message_length", max_message_bytes)]


def _bearer(token: str | None) -> list[tuple[str, str]] | None:
    return [("authorization", f"Bearer {token}")] if token else None


class PolicyClient:
    """Synchronous client. ``timeout`` is each call's deadline in seconds (None: calls carry no deadline,
    which saves about 0.4 ms per unary call when calls are spaced out like a control loop's, the cost of
    waking gRPC's timer thread to arm the deadline; back to back it is not measurable; docs/latency.md)."""

    def __init__(
        self,
        address: str,
        timeout: float | None = 30.0,
        retries: int = 5,
        backoff_s: float = 0.1,
        token: str | None = None,
        root_certificates: bytes | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        options = _channel_options(max_message_bytes)
        if root_certificates is not None:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            self.channel = grpc.insecure_channel(address, options)
        self.stub = pb_grpc.PolicyServiceStub(self.channel)
        self._act = prebuilt(self.channel, "unary_unary", "Act")
        self.timeout, self.retry = timeout, RetryPolicy(retries, backoff_s)
        self.metadata = _bearer(token)

    def _call(self, method: Callable, request: Any, timeout: float | None = None) -> Any:
        attempt = 0
        while True:
            try:
                return method(request, timeout=timeout or self.timeout, metadata=self.metadata)
            except grpc.RpcError as error:
                delay = self.retry.delay(error.code(), attempt)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def info(self) -> pb.PolicyInfo:
        return self._call(self.stub.GetInfo, pb.GetInfoRequest())

    def start_episode(
        self,
        instruction: str,
        mask: str | FutureMaskSpec = "",
        merge: bool = False,
        decode_mode: str = "",
        seed: int = 0,
        temperature: float | None = None,
        **merge_options: Any,
    ) -> str:
        """``mask``: a spec or label such as ``Mf+merge(k=5)`` (see :mod:`fm_agent_client.masks`; "" = the
        server's default); ``temperature``: action sampling (0 = greedy, None = the policy's default);
        ``seed`` seeds it."""
        return self._call(
            self.stub.StartEpisode,
            start_request(instruction, mask, merge, decode_mode, seed, temperature, **merge_options),
        ).episode_id

    def act(
        self,
        episode_id: str,
        images: Mapping[str, np.ndarray],
        proprio: Sequence[float] | np.ndarray | None = None,
        encoding: str = "raw",
        timeout: float | None = None,
    ) -> ActResult:
        """One control step. Not retried after a server restart: the episode is gone (NOT_FOUND)."""
        request = encode_act_request(episode_id, images, proprio, encoding)
        return ActResult.from_response(self._call(self._act, request, timeout))

    def open_stream(self, driver: str = "auto") -> ActStream:
        """A control loop on one ``StreamAct`` stream (see :class:`ActStream`)."""
        return ActStream(self.channel, self.metadata, driver)

    def stream(self, requests) -> Any:
        """``StreamAct``: yields ActResult for an iterable of ActRequest (see :func:`act_request`)."""
        for response in self.stub.StreamAct(iter(requests), metadata=self.metadata):
            yield ActResult.from_response(response)

    def end_episode(self, episode_id: str) -> int:
        return self._call(self.stub.EndEpisode, pb.EndEpisodeRequest(episode_id=episode_id)).steps

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncPolicyClient:
    """asyncio twin of :class:`PolicyClient`."""

    def __init__(
        self,
        address: str,
        timeout: float | None = 30.0,
        retries: int = 5,
        backoff_s: float = 0.1,
        token: str | None = None,
        root_certificates: bytes | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        options = _channel_options(max_message_bytes)
        if root_certificates is not None:
            self.channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            self.channel = grpc.aio.insecure_channel(address, options)
        self.stub = pb_grpc.PolicyServiceStub(self.channel)
        self._act = prebuilt(self.channel, "unary_unary", "Act")
        self.timeout, self.retry = timeout, RetryPolicy(retries, backoff_s)
        self.metadata = _bearer(token)

    async def _call(self, method: Callable, request: Any, timeout: float | None = None) -> Any:
        attempt = 0
        while True:
            try:
                return await method(request, timeout=timeout or self.timeout, metadata=self.metadata)
            except grpc.aio.AioRpcError as error:
                delay = self.retry.delay(error.code(), attempt)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def info(self) -> pb.PolicyInfo:
        return await self._call(self.stub.GetInfo, pb.GetInfoRequest())

    async def start_episode(
        self,
        instruction: str,
        mask: str | FutureMaskSpec = "",
        merge: bool = False,
        decode_mode: str = "",
        seed: int = 0,
        temperature: float | None = None,
        **merge_options: Any,
    ) -> str:
        request = start_request(instruction, mask, merge, decode_mode, seed, temperature, **merge_options)
        return (await self._call(self.stub.StartEpisode, request)).episode_id

    async def act(
        self,
        episode_id: str,
        images: Mapping[str, np.ndarray],
        proprio: Sequence[float] | np.ndarray | None = None,
        encoding: str = "raw",
        timeout: float | None = None,
    ) -> ActResult:
        response = await self._call(self._act, encode_act_request(episode_id, images, proprio, encoding), timeout)
        return ActResult.from_response(response)

    async def end_episode(self, episode_id: str) -> int:
        return (await self._call(self.stub.EndEpisode, pb.EndEpisodeRequest(episode_id=episode_id))).steps

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncPolicyClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
