"""``PolicyService`` over grpc.aio, with the standard health and reflection services.

A request's path: ``Act`` -> :func:`codec.decode_observation` (validation) -> the episode's history
plus the new frame -> :class:`batching.ModelWorker` (micro-batched ``VLAPolicy.predict``) -> the
frame is committed to the history only once the action exists, so a refused or failed request
leaves the episode exactly as it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .. import __version__
from ..attention import MASK_KINDS, FutureMaskSpec
from ..model import Observation, VLAPolicy
from ..v1 import policy_pb2 as pb
from ..v1 import policy_pb2_grpc as pb_grpc
from .batching import ModelWorker
from .codec import decode_observation, spec_from_message, spec_to_message
from .episodes import EpisodeStore
from .errors import RequestError, invalid

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


class PolicyServicer(pb_grpc.PolicyServiceServicer):
    def __init__(self, policy: VLAPolicy, settings: ServerSettings) -> None:
        self.policy, self.settings = policy, settings
        self.default_spec = FutureMaskSpec.parse(settings.default_mask)
        self.episodes = EpisodeStore(policy.config.history, settings.max_episodes, settings.idle_timeout_s)
        self.worker = ModelWorker(policy, settings.max_batch, settings.batch_window_ms)

    # -- unary handlers ---------------------------------------------------------------------------
    async def GetInfo(self, request, context) -> pb.PolicyInfo:
        cfg, actions = self.policy.config, self.policy.actions
        space = pb.ActionSpace(kind=actions.kind, dims=actions.dims, chunk=actions.chunk)
        if actions.kind == "continuous":
            space.low.extend(actions.clip_low)
            space.high.extend(actions.clip_high)
        else:
            space.num_actions = actions.bins
        return pb.PolicyInfo(
            model_name=self.settings.model_name, model_version=__version__, action_space=space,
            cameras=[pb.CameraSpec(name=c, height=cfg.image_size, width=cfg.image_size) for c in cfg.cameras],
            history=cfg.history, proprio_dim=cfg.proprio_dim, available_masks=list(MASK_KINDS),
            default_mask=spec_to_message(self.default_spec), max_message_bytes=self.settings.max_message_bytes,
            default_temperature=self.policy.config.temperature)

    async def StartEpisode(self, request, context) -> pb.StartEpisodeResponse:
        return await self._guard(context, self._start(request))

    async def _start(self, request) -> pb.StartEpisodeResponse:
        if not request.instruction.strip():
            raise invalid("instruction is missing")
        spec = spec_from_message(request.mask, self.default_spec)
        temperature = request.temperature if request.HasField("temperature") else self.policy.config.temperature
        if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
            raise invalid(f"temperature must be in [0, {MAX_TEMPERATURE}] (0 = greedy), got {temperature}")
        episode = self.episodes.start(request.instruction, spec, request.seed, temperature)
        log.info(json.dumps({"event": "start_episode", "episode": episode.id, "mask": spec.label,
                             "temperature": temperature}))
        return pb.StartEpisodeResponse(episode_id=episode.id)

    async def EndEpisode(self, request, context) -> pb.EndEpisodeResponse:
        async def end() -> pb.EndEpisodeResponse:
            episode = self.episodes.end(request.episode_id)
            log.info(json.dumps({"event": "end_episode", "episode": episode.id, "steps": episode.steps}))
            return pb.EndEpisodeResponse(steps=episode.steps)

        return await self._guard(context, end())

    async def Act(self, request, context) -> pb.ActResponse:
        return await self._guard(context, self._act(request, context))

    async def StreamAct(self, request_iterator, context) -> AsyncIterator[pb.ActResponse]:
        async for request in request_iterator:
            try:
                yield await self._act(request, context)
            except RequestError as error:
                await context.abort(error.code, str(error))

    # -- the step ---------------------------------------------------------------------------------
    async def _act(self, request, context) -> pb.ActResponse:
        received = time.perf_counter()
        episode = self.episodes.get(request.episode_id)
        cfg = self.policy.config
        frame, proprio = decode_observation(request.observation, cfg.cameras, cfg.proprio_dim)
        remaining = context.time_remaining() if context is not None else None
        deadline = time.monotonic() + remaining if remaining is not None else None
        async with episode.lock:
            frames = episode.frames_with(frame)
            decoded = time.perf_counter()
            try:
                observation = Observation(frames, episode.instruction, proprio, episode.temperature, episode.generator)
                batched = await self.worker.submit(observation, episode.spec, deadline)
            except TimeoutError as error:
                raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, str(error)) from None
            except ValueError as error:
                raise invalid(str(error)) from None
            episode.history.append(frame)  # committed only now: a failed step leaves the episode unchanged
            step = episode.steps
            episode.steps += 1
        result, timings = batched.result, batched.result.timings_ms
        response = pb.ActResponse(episode_id=episode.id, step=step, chunk=self.policy.actions.chunk)
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

    async def _guard(self, context, coroutine):
        """Turn RequestError into its gRPC status; anything else is INTERNAL, and the server keeps serving."""
        try:
            return await coroutine
        except RequestError as error:
            await context.abort(error.code, str(error))
        except Exception as error:  # noqa: BLE001
            log.exception("request failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")

    async def evict_forever(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            for episode_id in self.episodes.evict_idle():
                log.info(json.dumps({"event": "evicted", "episode": episode_id}))


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>``; health checks stay open for probes."""

    def __init__(self, token: str) -> None:
        self._token = f"Bearer {token}"

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        if metadata.get("authorization") == self._token:
            return await continuation(handler_call_details)

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)


async def serve(policy: VLAPolicy, settings: ServerSettings, ready: asyncio.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT; then stop accepting, finish in-flight calls, return 0."""
    options = [("grpc.max_receive_message_length", settings.max_message_bytes),
               ("grpc.max_send_message_length", settings.max_message_bytes)]
    interceptors = [BearerTokenInterceptor(settings.token)] if settings.token else []
    server = grpc.aio.server(options=options, interceptors=interceptors)
    servicer = PolicyServicer(policy, settings)
    pb_grpc.add_PolicyServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME], server)
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert and settings.tls_key:
        credentials = grpc.ssl_server_credentials([(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(json.dumps({"event": "serving", "address": f"{settings.host}:{port}", "model": settings.model_name,
                         "default_mask": servicer.default_spec.label}))
    print(f"fm-agent serving {settings.model_name or 'policy'} on {settings.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    evictor = asyncio.create_task(servicer.evict_forever(max(1.0, min(30.0, settings.idle_timeout_s / 4))))
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info(json.dumps({"event": "draining", "grace_s": settings.grace_s}))
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    evictor.cancel()
    await server.stop(settings.grace_s)  # new calls refused; in-flight ones finish
    servicer.worker.close()
    log.info(json.dumps({"event": "stopped"}))
    return 0
