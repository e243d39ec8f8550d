"""openpi's websocket policy protocol beside the gRPC service, so ``openpi_client`` code works unchanged.

The protocol (openpi's ``WebsocketPolicyServer`` / ``WebsocketClientPolicy``): on connect the server
sends its metadata; then each binary message is one msgpack-numpy observation dict and gets one
msgpack-numpy reply ``{"actions": array, ...}``; an error is a text frame, which the client raises
as ``RuntimeError``; ``GET /healthz`` answers plain HTTP. msgpack-numpy stores an array as a map
``{"__ndarray__": True, "data": bytes, "dtype": str, "shape": list}``, implemented here.

One connection is one episode, with its history kept exactly as on gRPC: every step runs through
:meth:`PolicyServicer.step`, with the same limits, micro-batching and errors. openpi clients reuse
one connection across episodes (its LIBERO example does), so a new ``prompt`` (or a true
``"reset"`` key) starts a new episode on the same connection. The episode's mask comes from the
URL query (``ws://host:port/?mask=Mf%2Bmerge``), else the server's default; ``"seed"`` in the first
observation seeds its sampling.

Which observation key is which camera, the proprio state and the instruction is an
:class:`OpenpiMapping`. The default is openpi's LIBERO example: ``observation/image`` ->
first camera, ``observation/wrist_image`` -> second, ``observation/state`` -> proprio, ``prompt``.
That example rotates both views by 180 degrees (``img[::-1, ::-1]``); fm-agent's LIBERO data is
flipped vertically only, so the default ``flip`` "horizontal" undoes the extra mirror.
"""

from __future__ import annotations

import hmac
import http
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgpack
import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .. import __version__
from ..attention import FutureMaskSpec
from .codec import check_image_size, check_proprio
from .episodes import Episode
from .errors import RequestError, invalid
from .server import PolicyServicer

log = logging.getLogger("fm_agent.openpi")
ALLOWED_DTYPES = {"|u1", "<f4", "<f8", "<f2", "<i8", "<i4", "|b1"}
FLIPS = ("none", "horizontal", "vertical", "rot180")


@dataclass
class OpenpiMapping:
    """openpi observation keys -> the policy's inputs; ``flip`` is applied to every image first."""

    cameras: dict[str, str] = field(default_factory=dict)  # observation key -> policy camera
    state_key: str = "observation/state"
    prompt_key: str = "prompt"
    flip: str = "horizontal"

    @classmethod
    def default(cls, cameras: list[str]) -> OpenpiMapping:
        keys = ["observation/image", "observation/wrist_image"]
        return cls(cameras={key: camera for key, camera in zip(keys, cameras)})

    def check(self, cameras: list[str]) -> None:
        """Every key maps to one of the policy's cameras and every camera has a key; ValueError otherwise."""
        unknown = sorted(set(self.cameras.values()) - set(cameras))
        missing = sorted(set(cameras) - set(self.cameras.values()))
        if unknown or missing:
            raise ValueError(
                f"--openpi-camera must map a key to each of the policy's cameras {cameras}"
                + (f"; unknown {unknown}" if unknown else "")
                + (f"; unmapped {missing}" if missing else "")
            )
        if self.flip not in FLIPS:
            raise ValueError(f"--openpi-flip must be one of {FLIPS}, got {self.flip!r}")

    def describe(self) -> dict[str, Any]:
        return {"cameras": self.cameras, "state": self.state_key, "prompt": self.prompt_key, "flip": self.flip}


def _unpack_array(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = obj.get(b"dtype")
        if isinstance(dtype, bytes):
            dtype = dtype.decode()
        if dtype not in ALLOWED_DTYPES:
            raise invalid(f"array dtype {dtype!r} is not accepted (numeric arrays only)")
        shape = tuple(obj.get(b"shape", ()))
        data = obj.get(b"data", b"")
        if len(shape) > 4 or any(not isinstance(n, int) or n < 0 for n in shape):
            raise invalid(f"array shape {shape} is not accepted")
        if int(np.prod(shape)) * np.dtype(dtype).itemsize != len(data):
            raise invalid(f"array of shape {shape} and dtype {dtype} does not match its {len(data)} data bytes")
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
    if b"__npgeneric__" in obj:
        dtype = obj.get(b"dtype")
        dtype = dtype.decode() if isinstance(dtype, bytes) else dtype
        if dtype not in ALLOWED_DTYPES:
            raise invalid(f"scalar dtype {dtype!r} is not accepted")
        return np.dtype(dtype).type(obj[b"data"])
    return obj


def _pack_array(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_pack_array)


def unpackb(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, object_hook=_unpack_array, strict_map_key=False)
    except RequestError:
        raise
    except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException) as error:
        raise invalid(f"the message is not msgpack-numpy ({type(error).__name__})") from None


class _Connection:
    """One websocket connection's episode state."""

    def __init__(self, mask: FutureMaskSpec | None) -> None:
        self.mask = mask
        self.episode: Episode | None = None
        self.prompt: str | None = None


class OpenpiEndpoint:
    """The websocket server; shares the gRPC servicer's episodes, limits and model worker."""

    def __init__(self, servicer: PolicyServicer, mapping: OpenpiMapping, token: str | None = None) -> None:
        self.servicer, self.mapping, self.token = servicer, mapping, token
        mapping.check(servicer.policy.config.cameras)
        self.server: Server | None = None
        self.port = 0

    def metadata(self) -> dict[str, Any]:
        """What openpi's server sends on connect (its ``policy.metadata``): enough to drive the policy."""
        policy = self.servicer.policy
        actions = policy.actions
        return {
            "server": "fm-agent",
            "version": __version__,
            "model_name": self.servicer.settings.model_name,
            "action_kind": actions.kind,
            "action_dims": actions.dims,
            "action_chunk": actions.chunk,
            "history": policy.config.history,
            "image_size": policy.config.image_size,
            "proprio_dim": policy.config.proprio_dim,
            "default_mask": self.servicer.default_spec.label,
            "observation_keys": self.mapping.describe(),
            "max_message_bytes": self.servicer.settings.max_message_bytes,
            "device": str(policy.device),
            "decode_path": policy.decode_path,
        }

    async def start(self, host: str, port: int) -> int:
        self.server = await serve(
            self._handle,
            host,
            port,
            compression=None,
            max_size=self.servicer.settings.max_message_bytes,
            process_request=self._http,
        )
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        log.info(json.dumps({"event": "openpi_serving", "address": f"{host}:{self.port}"}))
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    # -- HTTP: health and auth, before the websocket handshake ------------------------------------
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path == "/healthz":
            stalled = self.servicer.worker.busy_for() > self.servicer.limits.stall_timeout_s
            if stalled:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "model worker stalled\n")
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.token is not None:
            given = request.headers.get("Authorization", "")
            if not any(hmac.compare_digest(given, f"{scheme} {self.token}") for scheme in ("Api-Key", "Bearer")):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong Api-Key\n")
        try:
            self._mask(request.path)
        except RequestError as error:  # refused in the handshake: the client's constructor raises it
            return connection.respond(http.HTTPStatus.BAD_REQUEST, f"INVALID_ARGUMENT: {error}\n")
        return None

    # -- the websocket: metadata, then one reply per observation ----------------------------------
    async def _handle(self, connection: ServerConnection) -> None:
        state = _Connection(self._mask(connection.request.path if connection.request else ""))
        await connection.send(packb(self.metadata()))
        try:
            async for message in connection:
                try:
                    if isinstance(message, str):
                        raise invalid("send observations as binary msgpack-numpy frames, not text")
                    reply = await self._infer(unpackb(message), state)
                    await connection.send(packb(reply))
                except RequestError as error:
                    await connection.send(f"{error.code.name}: {error}")
                except ConnectionClosed:
                    raise
                except Exception as error:  # noqa: BLE001  (the server's fault: opaque to the client, logged)
                    internal = self.servicer.errors.internal(error, "openpi.infer")
                    await connection.send(f"{internal.code.name}: {internal}")
        except ConnectionClosed:
            pass
        finally:
            self._end(state)

    @staticmethod
    def _mask(path: str) -> FutureMaskSpec | None:
        """The episode mask of a connection from its URL query (``?mask=LABEL``), None = the server's default."""
        query = parse_qs(urlsplit(path).query)
        labels = query.get("mask")
        if not labels:
            return None
        if len(labels[0]) > 64:
            raise invalid("mask label too long")
        try:
            return FutureMaskSpec.parse(labels[0])
        except ValueError as error:
            raise invalid(f"mask: {error}") from None

    def _end(self, state: _Connection) -> None:
        if state.episode is not None:
            try:
                self.servicer.episodes.end(state.episode.id)
            except RequestError:
                pass  # already evicted
            state.episode = None

    def _episode(self, obs: dict, state: _Connection) -> Episode:
        prompt = obs.get(self.mapping.prompt_key)
        if isinstance(prompt, bytes):
            prompt = prompt.decode("utf-8", "replace")
        if not isinstance(prompt, str):
            raise invalid(f"observation key {self.mapping.prompt_key!r} (the instruction) is missing or not a string")
        if state.episode is not None and prompt == state.prompt and not bool(obs.get("reset", False)):
            return state.episode
        # a first step, or a new task on a reused connection: a new episode with a fresh history, opened
        # (and so checked) before the old one is closed, so a refused prompt leaves the old one as it was
        spec = state.mask or self.servicer.default_spec
        seed = obs.get("seed", 0)
        if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise invalid("seed must be a non-negative integer")
        episode = self.servicer.start_episode(prompt, spec.to_message(), int(seed), None)
        self._end(state)
        state.episode, state.prompt = episode, prompt
        return episode

    def _decode(self, obs: dict) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        limits, cfg = self.servicer.limits, self.servicer.policy.config
        frame: dict[str, np.ndarray] = {}
        for key, camera in self.mapping.cameras.items():
            image = obs.get(key)
            if not isinstance(image, np.ndarray):
                raise invalid(f"observation key {key!r} (camera {camera}) is missing or not an array")
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise invalid(f"{key!r}: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
            check_image_size(key, image.shape[0], image.shape[1], limits)
            frame[camera] = np.ascontiguousarray(self._flip(image))
        state = obs.get(self.mapping.state_key)
        if cfg.proprio_dim and not isinstance(state, np.ndarray):
            raise invalid(f"observation key {self.mapping.state_key!r} must hold {cfg.proprio_dim} numbers")
        proprio = check_proprio(state if cfg.proprio_dim else None, cfg.proprio_dim, repr(self.mapping.state_key))
        return frame, proprio

    def _flip(self, image: np.ndarray) -> np.ndarray:
        flip = self.mapping.flip
        if flip == "horizontal":
            return image[:, ::-1]
        if flip == "vertical":
            return image[::-1]
        if flip == "rot180":
            return image[::-1, ::-1]
        return image

    async def _infer(self, obs: Any, state: _Connection) -> dict[str, Any]:
        received = time.perf_counter()
        if not isinstance(obs, dict):
            raise invalid("an observation is a msgpack map of keys to arrays")
        obs = {k.decode() if isinstance(k, bytes) else k: v for k, v in obs.items()}
        episode = self._episode(obs, state)
        frame, proprio = self._decode(obs)
        batched, step, _ = await self.servicer.step(
            episode, lambda: self.servicer.prepare_frame(frame, proprio, episode)
        )
        result, timings = batched.result, batched.result.timings_ms
        actions = result.actions
        return {
            "actions": actions.astype(np.float32) if actions.dtype.kind == "f" else actions.astype(np.int64),
            "server_timing": {
                "infer_ms": (time.perf_counter() - received) * 1e3,
                "queue_ms": batched.queue_ms,
                "prefill_ms": timings["prefill_ms"],
                "decode_ms": timings["decode_ms"],
            },
            "fm_agent": {"episode_id": episode.id, "step": step, "mask": episode.spec.label},
        }
