"""``StreamAct`` as a synchronous control loop, driven from the caller's own thread.

Why a module of its own: grpcio's synchronous bidirectional stream hands every message across
threads. A request goes from the caller to a request-consumer thread. A response goes from gRPC's
I/O thread to the channel's completion-queue thread, then to the caller. On a 2-core machine that
serving also loads, those hops cost 0.1-0.2 ms per step, measured side by side in one run. They
left the stream 0.15 ms slower than openpi's websocket client for back-to-back calls
(docs/latency.md).

:class:`ActStream` drives the stream itself instead. Each step starts one batch (send the request,
receive the response) on a call with its own completion queue, and the caller's thread waits on
that queue. This is how grpcio runs its own blocking unary calls and its single-threaded
unary-stream option. It relies on grpcio's internal ``cygrpc`` layer, which the pinned grpcio
version provides. If a grpcio without that layer is installed, ``ActStream`` falls back to grpcio's
public threaded stream. Both paths send the same bytes, and a test runs both.
"""

from __future__ import annotations

import queue
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from .requests import SERVICE_PATH, encode_act_request, prebuilt
from .results import ActResult
from .v1 import policy_pb2 as pb

METHOD = SERVICE_PATH + "StreamAct"


class StreamActError(grpc.RpcError):
    """The stream's final status, raised by :meth:`ActStream.act`; ``code()`` and ``details()`` as on
    any ``grpc.RpcError`` from a call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"StreamAct ended: {code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _CallerDrivenStream:
    """One ``StreamAct`` call on its own completion queue, polled only by the thread that calls ``step``.

    Every operation started is tracked until its event is taken: grpcio destroys the queue with
    the last one, so it must not be polled after that."""

    def __init__(self, channel: grpc.Channel, metadata: Any) -> None:
        from grpc._cython import cygrpc  # noqa: PLC0415  (grpcio internals, only for this driver: see the module docstring)

        self._cygrpc = cygrpc
        metadata = tuple(metadata or ())
        start = (
            ((cygrpc.SendInitialMetadataOperation(metadata, 0),), "metadata"),
            ((cygrpc.ReceiveInitialMetadataOperation(0),), "initial_metadata"),
            ((cygrpc.ReceiveStatusOnClientOperation(0),), "status"),
        )
        self._call = channel._channel.segregated_call(  # noqa: SLF001
            cygrpc.PropagationConstants.GRPC_PROPAGATE_DEFAULTS,
            METHOD.encode(),
            None,
            None,
            metadata,
            None,
            start,
            cygrpc.build_census_context(),
            None,
        )
        self._due = {"metadata", "initial_metadata", "status"}
        self.status: StreamActError | None = None

    def _wait_for(self, tag: str) -> Any:
        """Takes events until ``tag``'s, noting the final status on the way; returns ``tag``'s event."""
        while tag in self._due:
            try:
                event = self._call.next_event()
            except BaseException:  # e.g. KeyboardInterrupt: grpcio has already freed the call and its queue
                self._due.clear()
                self.status = StreamActError(grpc.StatusCode.CANCELLED, "interrupted while waiting")
                raise
            self._due.discard(event.tag)
            if event.tag == "status":
                operation = event.batch_operations[0]
                self.status = StreamActError(
                    _CODES.get(operation.code(), grpc.StatusCode.UNKNOWN), operation.details() or ""
                )
            if event.tag == tag:
                return event
        return None

    def _start(self, operations: tuple, tag: str) -> bool:
        if self.status is not None or not self._call.operate(operations, tag):
            return False
        self._due.add(tag)
        return True

    def step(self, request: bytes) -> pb.ActResponse:
        cygrpc = self._cygrpc
        if self._start((cygrpc.SendMessageOperation(request, 0), cygrpc.ReceiveMessageOperation(0)), "step"):
            event = self._wait_for("step")
            message = event.batch_operations[1].message() if event.success else None
            if message is not None:
                return pb.ActResponse.FromString(message)
        self._wait_for("status")  # no response: the server ended the stream, and its status says why
        raise self.status or StreamActError(grpc.StatusCode.UNKNOWN, "the stream ended without a status")

    def close(self) -> None:
        """Half-closes the stream and waits for the server to end it (it does once the requests end)."""
        if self._start((self._cygrpc.SendCloseFromClientOperation(0),), "close"):
            self._wait_for("close")
        self._drain()

    def _drain(self) -> None:
        while self._due:
            self._wait_for(next(iter(self._due)))

    def __del__(self) -> None:
        """A stream dropped without ``close``: cancel it, so that the call and its queue are freed."""
        if getattr(self, "_due", None):
            try:
                self._call.cancel(self._cygrpc.StatusCode.cancelled, "the stream was dropped")
                self._drain()
            except Exception:  # noqa: BLE001  (the channel may already be closed at exit)
                pass


class _ThreadedStream:
    """grpcio's public bidirectional stream: a request queue consumed by grpcio's own thread."""

    _END = object()

    def __init__(self, channel: grpc.Channel, metadata: Any) -> None:
        self._requests: queue.Queue = queue.Queue()
        stream_act = prebuilt(channel, "stream_stream", "StreamAct")
        self._responses = stream_act(iter(self._requests.get, self._END), metadata=metadata)

    def step(self, request: bytes) -> pb.ActResponse:
        self._requests.put(request)
        return next(self._responses)

    def close(self) -> None:
        self._requests.put(self._END)
        try:
            for _ in self._responses:  # the server ends the stream once the requests end
                pass
        except grpc.RpcError:
            pass


def _open(channel: grpc.Channel, metadata: Any, driver: str) -> _CallerDrivenStream | _ThreadedStream:
    if driver not in ("auto", "caller", "threaded"):
        raise ValueError(f"driver must be 'auto', 'caller' or 'threaded', got {driver!r}")
    if driver != "threaded":
        try:
            return _CallerDrivenStream(channel, metadata)
        except (ImportError, AttributeError, TypeError):
            if driver == "caller":
                raise
    return _ThreadedStream(channel, metadata)


class ActStream:
    """``StreamAct`` as a synchronous control loop: ``act`` sends one observation and waits for its action.

    Why: a unary ``Act`` opens a fresh HTTP/2 stream per step (headers, deadline, trailers, a new call
    on both sides). One long-lived stream skips that. Driven from the caller's thread (see the module
    docstring), a step costs 0.1-0.2 ms less again (docs/latency.md).
    The stream has no deadline and no retries. If the server rejects a request (e.g. INVALID_ARGUMENT)
    or goes away, ``act`` raises ``grpc.RpcError`` and the stream is over.
    Open a new one: a rejected step leaves the episode itself unchanged. Use one stream from one thread.

        with client.open_stream() as stream:
            for obs in loop:
                actions = stream.act(episode, {"agentview": rgb}, proprio).actions

    ``driver``: "auto" (the caller-driven stream where grpcio allows it), "caller" or "threaded".
    """

    def __init__(self, channel: grpc.Channel, metadata: Any = None, driver: str = "auto") -> None:
        self._stream = _open(channel, metadata, driver)
        self.driver = "caller" if isinstance(self._stream, _CallerDrivenStream) else "threaded"

    def act(
        self,
        episode_id: str,
        images: Mapping[str, np.ndarray],
        proprio: Sequence[float] | np.ndarray | None = None,
        encoding: str = "raw",
    ) -> ActResult:
        return ActResult.from_response(self._stream.step(encode_act_request(episode_id, images, proprio, encoding)))

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> ActStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
