"""``fm-agent serve``: what the server is started with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from fm_agent_client.masks import FutureMaskSpec

from ..jobs import ConfigError, check_device, require_at_least
from .limits import Limits

DEFAULT_CHECKPOINT = Path("checkpoints/libero_spatial")


@dataclass
class ServeConfig:
    """Serve a policy over gRPC (with the standard health and reflection services)."""

    checkpoint: Path = DEFAULT_CHECKPOINT
    """policy folder (default: the embedded LIBERO policy)"""
    host: str = "127.0.0.1"
    port: int = 50051
    """0 picks a free port (printed at start, and written to --ready-file)"""
    mask: str = "causal"
    """default mask for episodes that do not choose one: causal, Mf, Mv2v/full, Mf+merge(op=max,k=3,slots=1), ..."""
    merge: bool = False
    """with a bare --mask kind: its merged variant (the same as --mask KIND+merge)"""
    decode_mode: Literal["prefill", "full"] | None = None
    """with a bare --mask kind: its decode mode (the same as --mask KIND/MODE)"""
    max_episodes: int = 256
    idle_timeout: float = 300.0
    """seconds before an idle episode is freed"""
    max_batch: int = 8
    """requests per forward pass (micro-batching)"""
    batch_window_ms: float = 0.0
    """extra wait for more requests before a forward pass (0: take what is queued)"""
    max_message_mb: int = 16
    """largest request or response (MiB)"""
    limits: Annotated[Limits, tyro.conf.OmitArgPrefixes] = field(default_factory=Limits)
    """what one request may ask; refused before any work, the message names the limit"""
    decode_threads: int = 2
    """threads decoding images off the event loop"""
    token: str | None = None
    """require 'authorization: Bearer TOKEN' (use beyond loopback)"""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    threads: int | None = None
    """torch intra-op threads (default: every core; the evaluation passes the cores its simulators leave)"""
    reference_decode: bool = False
    """decode every action token through transformers' forward instead of the exact fast step (the same
    tokens, about twice the decode time; for comparisons)"""
    compile_decode: bool = False
    """compile the fast decode step with torch.compile (needs a C++ compiler): about 1.5x faster action decoding
    on a CPU after 40-240 s of compiling at start-up (every batch class, before the port opens), with logits
    equal to the exact step's only to about 1e-5, so a greedy token can differ at a near-tie"""
    static_decode: bool = False
    """decode on a fixed-capacity KV cache, replayed from a CUDA graph per step on a GPU (where a step is bound
    by kernel launches); the exact step's tokens (tested), logits equal up to the attention kernel's summation
    order; on a CPU it runs eagerly at about the exact step's speed"""
    device: str = "cpu"
    """where the model runs: cpu, cuda or cuda:N"""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """the model's weights and activations (checkpoints are stored in float32; half precision can change a
    greedy action where two tokens nearly tie)"""
    json_logs: bool = False
    """one JSON object per log line"""
    openpi_port: int | None = None
    """also serve openpi's websocket policy protocol (openpi_client.WebsocketClientPolicy) on this port; 0 = a
    free one (printed, and written to --ready-file as "openpi")"""
    openpi_camera: tuple[str, ...] = ()
    """openpi observation KEY=CAMERA pairs (default: observation/image and observation/wrist_image onto the
    policy's cameras in order, as openpi's LIBERO example sends them)"""
    openpi_state_key: str = "observation/state"
    openpi_prompt_key: str = "prompt"
    openpi_flip: Literal["none", "horizontal", "vertical", "rot180"] = "horizontal"
    """applied to openpi images first: openpi's LIBERO example rotates views by 180 degrees, fm-agent's LIBERO
    policies read them flipped vertically only, so "horizontal" undoes the difference"""
    ready_file: Path | None = None
    """once serving, write {"address", "pid"} as JSON here (atomically): how a parent process learns the port"""

    def default_spec(self) -> FutureMaskSpec:
        """The default mask as one spec; raises ConfigError for a label outside the vocabulary."""
        label = self.mask
        if self.merge or self.decode_mode:
            if any(mark in label for mark in "+/("):
                raise ConfigError(f"--mask {label!r} is a full spec already; drop --merge/--decode-mode")
            label = label + ("+merge" if self.merge else f"/{self.decode_mode}")
        try:
            return FutureMaskSpec.parse(label)
        except ValueError as error:
            raise ConfigError(f"--mask: {error}") from None

    def validate(self) -> None:
        self.default_spec()
        if not self.checkpoint.exists():
            raise ConfigError(f"checkpoint {self.checkpoint} does not exist")
        for pair in self.openpi_camera:
            if pair.count("=") != 1 or not all(pair.split("=")):
                raise ConfigError(f"--openpi-camera {pair!r}: give KEY=CAMERA, e.g. observation/image=agentview")
        if self.openpi_port is not None and not 0 <= self.openpi_port < 65536:
            raise ConfigError(f"--openpi-port must be a port number, got {self.openpi_port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.compile_decode and self.reference_decode:
            raise ConfigError("--compile-decode compiles the fast decode step, which --reference-decode turns off")
        if self.static_decode and (self.compile_decode or self.reference_decode):
            raise ConfigError("--static-decode is a decode path of its own: drop --compile-decode/--reference-decode")
        check_device(self.device)
        require_at_least(self, 1, "max_episodes", "max_batch", "max_message_mb", "decode_threads", "threads")
