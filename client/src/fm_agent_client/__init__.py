"""A light client for the fm-agent policy server: grpcio, protobuf and numpy only (no torch).

    from fm_agent_client import PolicyClient

    with PolicyClient("127.0.0.1:50051") as client:
        episode = client.start_episode("put the bowl on the plate", mask="Mf+merge")
        actions = client.act(episode, {"agentview": rgb, "wrist": rgb2}, proprio=state).actions

Calls carry a deadline; ``UNAVAILABLE`` (server restarting, connection refused) is retried with
exponential backoff, and the channel reconnects by itself once the server is back.

Several replicas: give their addresses comma-separated (``"10.0.0.1:50051,10.0.0.2:50051"``) and the
channel balances calls over them (gRPC's round_robin). Episodes stored on a server live on one
replica, so behind a balancer run them with :class:`StatelessEpisode`, whose history stays here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import socket
import time
from collections import deque
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
    "ROUND_ROBIN",
    "RetryPolicy",
    "StatelessEpisode",
    "StreamActError",
    "act_request",
    "channel_target",
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


def _channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [("grpc.max_send_message_length", max_message_bytes), ("grpc.max_receive_message_length", max_message_bytes)]


ROUND_ROBIN = ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))


def channel_target(address: str) -> tuple[str, list[tuple[str, Any]]]:
    """gRPC target and extra channel options for ``address``: one ``host:port`` as it is; several,
    comma-separated, as one ``ipv4:``/``ipv6:`` target over their resolved addresses with round_robin
    balancing (a replica that goes away is skipped once its connection fails)."""
    parts = [p.strip() for p in address.split(",") if p.strip()]
    if len(parts) <= 1:
        return address, []
    resolved, family = [], None
    for part in parts:
        host, _, port = part.rpartition(":")
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = ipaddress.ip_address(socket.gethostbyname(host))  # the balancer needs addresses, not names
        family = family or ("ipv6" if ip.version == 6 else "ipv4")
        if (ip.version == 6) != (family == "ipv6"):
            raise ValueError(f"replicas must all be IPv4 or all IPv6, got {address!r}")
        resolved.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    return f"{family}:{','.join(resolved)}", [ROUND_ROBIN]


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
        target, balancing = channel_target(address)
        options = _channel_options(max_message_bytes) + balancing
        if root_certificates is not None:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
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

    def act_stateless(self, request: pb.StatelessActRequest, timeout: float | None = None) -> ActResult:
        """One ``ActStateless`` step (see :class:`StatelessEpisode`). Retried on UNAVAILABLE like every
        call: the request holds the whole episode, so whichever replica answers gives the same step."""
        return ActResult.from_response(self._call(self.stub.ActStateless, request, timeout))

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


class StatelessEpisode:
    """An episode whose frame history is kept here and sent with every step (``ActStateless``).

    The server keeps nothing, so any replica answers any step and losing one loses nothing: the
    next try goes to another with the same request. A seed is drawn here when none is given, so
    every replica samples step i from the same (seed, i). A failed step changes nothing.

    With an :class:`AsyncPolicyClient`, pass ``client=None`` and the policy's ``history``
    (``PolicyInfo.history``), and step with :meth:`act_async`."""

    def __init__(
        self,
        client: PolicyClient | None,
        instruction: str,
        mask: str | FutureMaskSpec = "",
        seed: int = 0,
        temperature: float | None = None,
        history: int | None = None,
        **merge_options: Any,
    ) -> None:
        self.client = client
        seed = seed or random.getrandbits(63) + 1
        self.settings = start_request(instruction, mask, seed=seed, temperature=temperature, **merge_options)
        if history is None:
            if client is None:
                raise ValueError("give history (PolicyInfo.history) when there is no PolicyClient to ask")
            history = client.info().history
        self.length = history
        self.frames: deque[pb.Observation] = deque(maxlen=self.length)
        self.step = 0

    def request(
        self,
        images: Mapping[str, np.ndarray],
        proprio: Sequence[float] | np.ndarray | None = None,
        encoding: str = "raw",
    ) -> tuple[pb.StatelessActRequest, pb.Observation]:
        """The next step's request and its new observation (for :meth:`commit` once it succeeded)."""
        observation = act_request("", images, proprio, encoding).observation
        request = pb.StatelessActRequest(episode=self.settings, step=self.step)
        request.frames.extend([*self.frames, observation][-self.length :])
        return request, observation

    def commit(self, observation: pb.Observation) -> None:
        """The step succeeded: its frame joins the history (a failed step changes nothing, as on the server)."""
        self.frames.append(observation)
        self.step += 1

    def act(
        self,
        images: Mapping[str, np.ndarray],
        proprio: Sequence[float] | np.ndarray | None = None,
        encoding: str = "raw",
        timeout: float | None = None,
    ) -> ActResult:
        if self.client is None:
            raise ValueError("this episode has no PolicyClient: step it with act_async")
        request, observation = self.request(images, proprio, encoding)
        result = self.client.act_stateless(request, timeout)
        self.commit(observation)
        return result

    async def act_async(
        self,
        client: AsyncPolicyClient,
        images: Mapping[str, np.ndarray],
        proprio: Sequence[float] | np.ndarray | None = None,
        encoding: str = "raw",
        timeout: float | None = None,
    ) -> ActResult:
        """The same step through an :class:`AsyncPolicyClient`."""
        request, observation = self.request(images, proprio, encoding)
        result = await client.act_stateless(request, timeout)
        self.commit(observation)
        return result


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
        target, balancing = channel_target(address)
        options = _channel_options(max_message_bytes) + balancing
        if root_certificates is not None:
            self.channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            self.channel = grpc.aio.insecure_channel(target, options)
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

    async def act_stateless(self, request: pb.StatelessActRequest, timeout: float | None = None) -> ActResult:
        """``ActStateless`` (see :class:`StatelessEpisode`, which builds the requests)."""
        return ActResult.from_response(await self._call(self.stub.ActStateless, request, timeout))

    async def end_episode(self, episode_id: str) -> int:
        return (await self._call(self.stub.EndEpisode, pb.EndEpisodeRequest(episode_id=episode_id))).steps

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncPolicyClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
