"""``fm-agent serve``: load a policy and serve it until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import traceback

import torch

from ..jobs import ConfigError
from ..model import VLAPolicy
from .config import ServeConfig
from .openpi import OpenpiMapping
from .server import PortInUse, ServerSettings, serve


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; messages that are JSON objects themselves are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": record.created, "level": record.levelname, "logger": record.name}
        message = record.getMessage()
        try:
            parsed = json.loads(message)
            entry.update(parsed if isinstance(parsed, dict) else {"message": parsed})
        except ValueError:
            entry["message"] = message
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(entry)


def openpi_mapping(config: ServeConfig, cameras: list[str]) -> OpenpiMapping | None:
    """The --openpi-* flags as a mapping, or None when no openpi endpoint runs."""
    if config.openpi_port is None:
        return None
    pairs = dict(pair.split("=") for pair in config.openpi_camera)
    mapping = OpenpiMapping(pairs) if pairs else OpenpiMapping.default(cameras)
    mapping.state_key, mapping.prompt_key, mapping.flip = (
        config.openpi_state_key,
        config.openpi_prompt_key,
        config.openpi_flip,
    )
    unknown = sorted(set(mapping.cameras.values()) - set(cameras))
    missing = sorted(set(cameras) - set(mapping.cameras.values()))
    if unknown or missing:
        raise ConfigError(
            f"--openpi-camera: the policy's cameras are {cameras} (unknown {unknown}, unmapped {missing})"
        )
    return mapping


def load_served_policy(config: ServeConfig) -> VLAPolicy:
    """The policy as ``fm-agent serve`` runs it, with its torch threads (a Ray server actor loads it the same way)."""
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    try:
        torch.set_num_interop_threads(1)  # the server runs one model thread; inter-op parallelism is unused
    except RuntimeError:  # already set in this process (a long-lived actor)
        pass
    return VLAPolicy.from_pretrained(
        config.checkpoint,
        fast_decode=not config.reference_decode,
        compile_decode=config.compile_decode,
        static_decode=config.static_decode,
        device=config.device,
        dtype=getattr(torch, config.dtype),
    )


def server_settings(config: ServeConfig, policy: VLAPolicy) -> ServerSettings:
    return ServerSettings(
        host=config.host,
        port=config.port,
        default_mask=config.default_spec().label,
        max_episodes=config.max_episodes,
        idle_timeout_s=config.idle_timeout,
        max_batch=config.max_batch,
        batch_window_ms=config.batch_window_ms,
        max_message_bytes=config.max_message_mb << 20,
        token=config.token,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        model_name=config.checkpoint.name,
        limits=config.limits,
        decode_threads=config.decode_threads,
        openpi_port=config.openpi_port,
        openpi_mapping=openpi_mapping(config, policy.config.cameras),
    )


def run_serve(config: ServeConfig, command: str = "") -> int:
    config.validate()
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonLogFormatter() if config.json_logs else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    policy = load_served_policy(config)
    settings = server_settings(config, policy)
    try:
        return asyncio.run(serve(policy, settings, ready_file=config.ready_file))
    except PortInUse as error:
        print(f"fm-agent serve: {error}", file=sys.stderr)
        return 2
