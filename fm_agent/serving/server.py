"""``PolicyService`` over grpc.aio, with the standard health and reflection services.

A request's path: ``Act`` -> (decoder thread) :func:`codec.decode_observation`, each camera fitted
to the model's size, ``VLAPolicy.prepare`` -> :class:`batching.ModelWorker` (micro-batched
``VLAPolicy.predict_prepared``) -> the frame is committed to the history only once the action
exists, so a refused, cancelled or failed request leaves the episode exactly as it was.

The event loop only routes: anything whose cost grows with the input (image decoding, resizing,
prompt building) runs in a small decoder pool, and the model in its own thread. Every size a
request controls is bounded by :class:`limits.Limits` before work starts; unparseable messages are
``INVALID_ARGUMENT``; the server's own faults are ``INTERNAL`` with an opaque error id.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fm_agent_client.v1 import policy_pb2 as pb

from .. import __version__
from ..attention import MASK_KINDS, FutureMaskSpec
from ..model import Observation, PreparedObservation, VLAPolicy, step_generator
from ..model.history import EpisodeHistory
from ..model.text_tokenizer import words
from .batching import ModelWorker, QueueFull
from .codec import decode_observation, spec_from_message
from .episodes import Episode, EpisodeStore
from .errors import ErrorReporter, RequestError, invalid
from .limits import Limits
from .reflection import enable_reflection

MAX_TEMPERATURE = 100.0
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PolicyService"].full_name
log = logging.getLogger("fm_agent.server")


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    default_mask: str = "causal"
    max_episodes: int = 256
    idle_timeout_s: float = 300.0
    max_batch: int = 8
    batch_window_ms: float = 0.0
    max_message_bytes: int = 16 * 1024 * 1024
    grace_s: float = 10.0
    token: str | None = None  # bearer token; None = no check (loopback use)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    model_name: str = ""
    limits: Limits = field(default_factory=Limits)
    decode_threads: int = 2  # image decoding and request preparation, off the event loop
    openpi_port: int | None = None  # also speak openpi's websocket protocol there (0 = a free port)
    openpi_mapping: Any = None  # openpi.OpenpiMapping; None = openpi's LIBERO keys onto the policy's cameras


class PortInUse(RuntimeError):
    """The address is taken: serving beside another server would split clients between the two."""


class Malformed:
    """Stands in for a request whose bytes are not a valid message of its type."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name, self.error = type_name, error


def tolerant(message_type: Any) -> Callable[[bytes], Any]:
    """A request deserializer that hands unparseable bytes to the handler instead of failing the call
    with UNKNOWN (and a traceback in the log per request)."""

    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as error:
            return Malformed(message_type.DESCRIPTOR.name, error)

    return parse


def _well_formed(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise invalid(f"the request bytes are not a valid fm_agent.v1.{request.type_name} message")
    return request


class PolicyServicer:
    def __init__(self, policy: VLAPolicy, settings: ServerSettings) -> None:
        self.policy, self.settings, self.limits = policy, settings, settings.limits
        self.default_spec = FutureMaskSpec.parse(settings.default_mask)
        self.episodes = EpisodeStore(policy.config.history, settings.max_episodes, settings.idle_timeout_s)
        self.worker = ModelWorker(
            policy, settings.max_batch, settings.batch_window_ms, settings.limits.max_queued_requests
        )
        self.decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="fm-agent-decode")
        self.max_instruction_words = settings.limits.instruction_words(policy.prompt_capacity())
        self.errors = ErrorReporter(log)

    def close(self) -> None:
        self.worker.close()
        self.decoder.shutdown(wait=False, cancel_futures=True)

    # -- unary handlers ---------------------------------------------------------------------------
    async def GetInfo(self, request, context) -> pb.PolicyInfo:
        return await self._guard(context, self._info(request), "GetInfo")

    async def _info(self, request) -> pb.PolicyInfo:
        _well_formed(request)
        cfg, actions, limits = self.policy.config, self.policy.actions, self.limits
        space = pb.ActionSpace(kind=actions.kind, dims=actions.dims, chunk=actions.chunk)
        if actions.kind == "continuous":
            space.low.extend(actions.clip_low)
            space.high.extend(actions.clip_high)
        else:
            space.num_actions = actions.bins
        return pb.PolicyInfo(
            model_name=self.settings.model_name,
            model_version=__version__,
            action_space=space,
            cameras=[pb.CameraSpec(name=c, height=cfg.image_size, width=cfg.image_size) for c in cfg.cameras],
            history=cfg.history,
            proprio_dim=cfg.proprio_dim,
            available_masks=list(MASK_KINDS),
            default_mask=self.default_spec.to_message(),
            max_message_bytes=self.settings.max_message_bytes,
            default_temperature=self.policy.config.temperature,
            limits=pb.ServerLimits(
                max_instruction_chars=limits.max_instruction_chars,
                max_instruction_words=self.max_instruction_words,
                max_image_pixels=limits.max_image_pixels,
                max_image_side=limits.max_image_side,
                max_queued_requests=limits.max_queued_requests,
            ),
            device=str(self.policy.device),
            decode_path=self.policy.decode_path,
        )

    async def StartEpisode(self, request, context) -> pb.StartEpisodeResponse:
        return await self._guard(context, self._start(request), "StartEpisode")

    def _check_instruction(self, instruction: str) -> int:
        """The prompt's length for ``instruction``, which must fit the limits."""
        if len(instruction) > self.limits.max_instruction_chars:
            raise invalid(
                f"the instruction has {len(instruction)} characters, the server's limit is "
                f"{self.limits.max_instruction_chars} (max_instruction_chars)"
            )
        if not instruction.strip():
            raise invalid("instruction is missing")
        count = len(words(instruction))
        if count > self.max_instruction_words:
            raise invalid(
                f"the instruction has {count} words, the limit is {self.max_instruction_words} "
                f"(max_instruction_words: what the model's context holds beside frames and actions)"
            )
        proprio = np.zeros(self.policy.config.proprio_dim) if self.policy.config.proprio_dim else None
        return len(self.policy.prompt_ids(instruction, proprio))

    async def _start(self, request) -> pb.StartEpisodeResponse:
        _well_formed(request)
        temperature = request.temperature if request.HasField("temperature") else None
        episode = self.start_episode(request.instruction, request.mask, request.seed, temperature)
        return pb.StartEpisodeResponse(episode_id=episode.id)

    async def EndEpisode(self, request, context) -> pb.EndEpisodeResponse:
        async def end() -> pb.EndEpisodeResponse:
            episode = self.episodes.end(_well_formed(request).episode_id)
            log.info(json.dumps({"event": "end_episode", "episode": episode.id, "steps": episode.steps}))
            return pb.EndEpisodeResponse(steps=episode.steps)

        return await self._guard(context, end(), "EndEpisode")

    async def Act(self, request, context) -> pb.ActResponse:
        return await self._guard(context, self._act(request, context), "Act")

    async def StreamAct(self, request_iterator, context) -> AsyncIterator[pb.ActResponse]:
        async for request in request_iterator:
            yield await self._guard(context, self._act(request, context), "StreamAct")

    # -- the step ---------------------------------------------------------------------------------
    def _prepare(self, request: pb.ActRequest, episode: Episode) -> tuple[dict, PreparedObservation]:
        """Decode, fit and check one request (in a decoder thread, under the episode's lock)."""
        cfg = self.policy.config
        frame, proprio = decode_observation(request.observation, cfg.cameras, cfg.proprio_dim, self.limits)
        return self.prepare_frame(frame, proprio, episode)

    def prepare_frame(
        self, frame: dict[str, np.ndarray], proprio: np.ndarray | None, episode: Episode
    ) -> tuple[dict, PreparedObservation]:
        """A decoded frame (cameras at any size within the limits) fitted and turned into model inputs."""
        try:
            frame = self.policy.check_frame(frame)
            generator = step_generator(episode.seed, episode.steps) if episode.temperature > 0 else None
            observation = Observation(
                episode.history.with_frame(frame),
                episode.instruction,
                proprio,
                episode.temperature,
                generator,
                episode.history.features_with_new_frame(),
            )
            return frame, self.policy.prepare(observation)
        except ValueError as error:
            raise invalid(str(error)) from None

    async def step(
        self,
        episode: Episode,
        prepare: Callable[[], tuple[dict, PreparedObservation]],
        deadline: float | None = None,
    ) -> tuple[Any, int, float]:
        """One control step of ``episode``, whatever the wire: ``prepare`` runs in a decoder thread under
        the episode's lock, the model in its worker; the frame is committed only once the action exists.
        Returns the worker's result, the step index and when decoding finished (perf_counter)."""
        stalled = self.worker.busy_for()
        if stalled > self.limits.stall_timeout_s:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, f"the model worker has made no progress for {stalled:.0f} s; retry later"
            )
        loop = asyncio.get_running_loop()
        async with episode.lock:
            frame, prepared = await loop.run_in_executor(self.decoder, prepare)
            decoded = time.perf_counter()
            try:
                batched = await self.worker.submit(prepared, episode.spec, deadline)
            except TimeoutError as error:
                raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, str(error)) from None
            except QueueFull as error:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)) from None
            # committed only now, with its vision features: a failed step leaves the episode unchanged
            episode.history.append(frame, batched.result.frame_features)
            step = episode.steps
            episode.steps += 1
        return batched, step, decoded

    def episode_settings(
        self, instruction: str, mask: pb.MaskOptions, temperature: float | None
    ) -> tuple[FutureMaskSpec, float]:
        """The checked mask spec and temperature of an episode (stateful or stateless)."""
        prompt_length = self._check_instruction(instruction)
        spec = spec_from_message(mask, self.default_spec, prompt_length)
        temperature = self.policy.config.temperature if temperature is None else temperature
        if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
            raise invalid(f"temperature must be in [0, {MAX_TEMPERATURE}] (0 = greedy), got {temperature}")
        return spec, temperature

    def start_episode(self, instruction: str, mask: pb.MaskOptions, seed: int, temperature: float | None) -> Episode:
        """Check and open an episode (gRPC StartEpisode and the openpi endpoint alike)."""
        spec, temperature = self.episode_settings(instruction, mask, temperature)
        self._evict()
        episode = self.episodes.start(instruction, spec, seed, temperature)
        log.info(
            json.dumps(
                {"event": "start_episode", "episode": episode.id, "mask": spec.label, "temperature": temperature}
            )
        )
        return episode

    async def _act(self, request, context) -> pb.ActResponse:
        received = time.perf_counter()
        episode = self.episodes.get(_well_formed(request).episode_id)
        batched, step, decoded = await self.step(episode, lambda: self._prepare(request, episode), _deadline(context))
        return self._response(episode.id, step, batched, received, decoded)

    async def ActStateless(self, request, context) -> pb.ActResponse:
        return await self._guard(context, self._act_stateless(request, context), "ActStateless")

    async def _act_stateless(self, request, context) -> pb.ActResponse:
        """A step of an episode that lives on the client: a throwaway Episode is filled with the sent
        frames (their vision features computed afresh) and stepped exactly as a stored one would be."""
        received = time.perf_counter()
        _well_formed(request)
        length = self.policy.config.history
        if not 1 <= len(request.frames) <= length:
            raise invalid(f"frames: send 1 to {length} observations (the policy's history), got {len(request.frames)}")
        settings = request.episode
        temperature = settings.temperature if settings.HasField("temperature") else None
        spec, temperature = self.episode_settings(settings.instruction, settings.mask, temperature)
        seed = settings.seed or secrets.randbits(63)
        episode = Episode("", settings.instruction, spec, EpisodeHistory(length), seed, temperature, request.step)

        def prepare() -> tuple[dict, PreparedObservation]:
            cfg = self.policy.config
            *earlier, current = request.frames
            for observation in earlier:
                frame, _ = decode_observation(observation, cfg.cameras, cfg.proprio_dim, self.limits)
                try:
                    episode.history.append(self.policy.check_frame(frame))
                except ValueError as error:
                    raise invalid(str(error)) from None
            frame, proprio = decode_observation(current, cfg.cameras, cfg.proprio_dim, self.limits)
            return self.prepare_frame(frame, proprio, episode)

        batched, step, decoded = await self.step(episode, prepare, _deadline(context))
        return self._response("", step, batched, received, decoded)

    def _response(self, episode_id: str, step: int, batched: Any, received: float, decoded: float) -> pb.ActResponse:
        result, timings = batched.result, batched.result.timings_ms
        response = pb.ActResponse(episode_id=episode_id, step=step, chunk=self.policy.actions.chunk)
        if self.policy.actions.kind == "continuous":
            response.dims = self.policy.actions.dims
            response.actions.extend(result.actions.reshape(-1).tolist())
        else:
            response.dims = 1
            response.discrete_actions.extend(int(a) for a in result.actions.reshape(-1))
        latency = response.latency
        latency.queue_ms = batched.queue_ms
        latency.preprocess_ms = (decoded - received) * 1e3 + timings["preprocess_ms"]
        latency.prefill_ms, latency.decode_ms = timings["prefill_ms"], timings["decode_ms"]
        latency.batch_size = batched.batch_size
        latency.server_ms = (time.perf_counter() - received) * 1e3
        return response

    async def _guard(self, context, coroutine, where: str):
        """RequestError -> its gRPC status; anything else -> INTERNAL with an error id (details in the log)."""
        try:
            return await coroutine
        except RequestError as error:
            await context.abort(error.code, str(error))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001
            internal = self.errors.internal(error, where)
            await context.abort(internal.code, str(internal))

    # -- housekeeping -----------------------------------------------------------------------------
    def _evict(self) -> None:
        for episode_id in self.episodes.evict_idle():
            log.info(json.dumps({"event": "evicted", "episode": episode_id}))

    async def evict_forever(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            self._evict()

    async def watch_worker(self, health_servicer: Any, period_s: float = 0.25) -> None:
        """Health follows the model worker: NOT_SERVING while a batch runs past the stall timeout."""
        serving = True
        while True:
            await asyncio.sleep(period_s)
            stalled = self.worker.busy_for() > self.limits.stall_timeout_s
            if stalled == serving:
                serving = not stalled
                status = (
                    health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ("", SERVICE_NAME):
                    await health_servicer.set(name, status)
                log.warning(
                    json.dumps(
                        {
                            "event": "worker_recovered" if serving else "worker_stalled",
                            "stall_timeout_s": self.limits.stall_timeout_s,
                        }
                    )
                )


def _deadline(context: Any) -> float | None:
    """The call's deadline on the monotonic clock, if the client set one."""
    remaining = context.time_remaining() if context is not None else None
    return time.monotonic() + remaining if remaining is not None else None


def _service_handler(servicer: PolicyServicer) -> grpc.GenericRpcHandler:
    def unary(method, request_type, response_type):
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=tolerant(request_type), response_serializer=response_type.SerializeToString
        )

    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "GetInfo": unary(servicer.GetInfo, pb.GetInfoRequest, pb.PolicyInfo),
            "StartEpisode": unary(servicer.StartEpisode, pb.StartEpisodeRequest, pb.StartEpisodeResponse),
            "EndEpisode": unary(servicer.EndEpisode, pb.EndEpisodeRequest, pb.EndEpisodeResponse),
            "Act": unary(servicer.Act, pb.ActRequest, pb.ActResponse),
            "ActStateless": unary(servicer.ActStateless, pb.StatelessActRequest, pb.ActResponse),
            "StreamAct": grpc.stream_stream_rpc_method_handler(
                servicer.StreamAct,
                request_deserializer=tolerant(pb.ActRequest),
                response_serializer=pb.ActResponse.SerializeToString,
            ),
        },
    )


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>``; health checks stay open for probes."""

    def __init__(self, token: str) -> None:
        self._token = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        given = given.encode() if isinstance(given, str) else bytes(given)
        if hmac.compare_digest(given, self._token):  # constant time: no timing oracle on the token
            return await continuation(handler_call_details)

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)


class PolicyServer:
    """A started server and its background tasks; ``serve`` runs one until a signal."""

    def __init__(self, policy: VLAPolicy, settings: ServerSettings) -> None:
        self.settings = settings
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]  # a second server on a busy port must fail, not share it
        interceptors = [BearerTokenInterceptor(settings.token)] if settings.token else []
        self.server = grpc.aio.server(
            options=options, interceptors=interceptors, maximum_concurrent_rpcs=settings.limits.max_concurrent_rpcs
        )
        self.servicer = PolicyServicer(policy, settings)
        self.server.add_generic_rpc_handlers((_service_handler(self.servicer),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection([SERVICE_NAME, health.SERVICE_NAME], self.server)
        self.port = 0
        self.openpi: Any = None
        self.openpi_port = 0
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> int:
        settings = self.settings
        address = f"{settings.host}:{settings.port}"
        try:
            if settings.tls_cert and settings.tls_key:
                credentials = grpc.ssl_server_credentials(
                    [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
                )
                self.port = self.server.add_secure_port(address, credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            self.servicer.close()
            raise PortInUse(
                f"cannot listen on {address}: the port is in use (another server?) or the "
                "address is not this machine's; choose another --port or stop the other server"
            )
        await self.server.start()
        if settings.openpi_port is not None:
            from .openpi import OpenpiEndpoint, OpenpiMapping  # noqa: PLC0415  (openpi.py builds on this module)

            mapping = settings.openpi_mapping or OpenpiMapping.default(self.servicer.policy.config.cameras)
            self.openpi = OpenpiEndpoint(self.servicer, mapping, settings.token)
            try:
                self.openpi_port = await self.openpi.start(settings.host, settings.openpi_port)
            except OSError as error:
                await self.server.stop(0)
                self.servicer.close()
                raise PortInUse(
                    f"cannot listen on {settings.host}:{settings.openpi_port} (--openpi-port): {error}"
                ) from None
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        period = max(1.0, min(30.0, settings.idle_timeout_s / 4))
        self._tasks = [
            asyncio.create_task(self.servicer.evict_forever(period)),
            asyncio.create_task(self.servicer.watch_worker(self.health)),
        ]
        log.info(
            json.dumps(
                {
                    "event": "serving",
                    "address": f"{settings.host}:{self.port}",
                    "model": settings.model_name,
                    "default_mask": self.servicer.default_spec.label,
                    "device": str(self.servicer.policy.device),
                    "dtype": str(self.servicer.policy.model.dtype).removeprefix("torch."),
                    "decode": self.servicer.policy.decode_path,
                }
            )
        )
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let in-flight calls finish (up to the grace period), free the worker."""
        log.info(json.dumps({"event": "draining", "grace_s": self.settings.grace_s}))
        for task in self._tasks:
            task.cancel()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.openpi is not None:
            await self.openpi.stop()
        await self.server.stop(self.settings.grace_s)
        self.servicer.close()
        log.info(json.dumps({"event": "stopped"}))


def write_ready_file(path: Path, address: str, openpi: str | None = None) -> None:
    """``{"address": "host:port", "pid": N}`` (+ ``"openpi"``), renamed into place so a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    record: dict[str, Any] = {"address": address, "pid": os.getpid()}
    if openpi is not None:
        record["openpi"] = openpi
    partial.write_text(json.dumps(record))
    os.replace(partial, path)


async def serve(
    policy: VLAPolicy, settings: ServerSettings, ready: asyncio.Event | None = None, ready_file: Path | None = None
) -> int:
    """Serve until SIGTERM/SIGINT; then stop accepting, finish in-flight calls, return 0.

    Readiness is signalled once the port is bound and health says SERVING: ``ready`` is set (in
    process) and ``ready_file`` is written (for a parent process; removed again at exit)."""
    server = PolicyServer(policy, settings)
    port = await server.start()
    address = f"{settings.host}:{port}"
    print(f"fm-agent serving {settings.model_name or 'policy'} on {address}", flush=True)
    if server.openpi is not None:
        print(f"fm-agent openpi websocket endpoint on ws://{settings.host}:{server.openpi_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_file is not None:
        openpi = f"{settings.host}:{server.openpi_port}" if server.openpi is not None else None
        write_ready_file(ready_file, address, openpi)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        await server.stop()
    finally:
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
    return 0
