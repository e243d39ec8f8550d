"""``fm-agent profile``, ``fm-agent soak`` and ``fm-agent masks``: what a benchmark measures.

Benchmarks print and save what they measured (JSON + PNG); nothing here is a pass/fail test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..jobs import ConfigError, check_device, check_masks, require_at_least

# Every mask family in both decode modes, and merged: the grid the latency profile times.
PROFILE_SPECS: tuple[str, ...] = (
    "causal",
    "Mf/prefill",
    "Mf/full",
    "Mf+merge",
    "Mv2v/prefill",
    "Mv2v/full",
    "Mv2v+merge",
    "Mv2t/prefill",
    "Mv2t/full",
    "Mv2t+merge",
)
PROFILE_PRESETS: dict[str, dict] = {
    "full": dict(contexts=(256, 1024, 2048), dtypes=("float32", "bfloat16"), repetitions=3),
    "quick": dict(contexts=(256, 1024), dtypes=("float32",), repetitions=2, decode_tokens=4, full_decode_tokens=1),
}


@dataclass(kw_only=True)
class ProfileConfig:
    """Prefill ms and decode ms/token of causal and every mask (prefill and full decode, merged), on a
    Llama-shaped decoder with random weights; or (--step) one control step per chunk length; or (--grpc)
    the transport cost of Act. Writes JSON + PNG to --out."""

    preset: Literal["full", "quick"] = "full"
    """full: the whole grid (about 10-20 min on 2 CPU cores); quick: a 1-2 minute look"""
    contexts: tuple[int, ...] | None = None
    """prompt lengths in tokens (overrides the preset)"""
    dtypes: tuple[Literal["float32", "bfloat16", "float16"], ...] | None = None
    specs: tuple[str, ...] = PROFILE_SPECS
    """mask labels: causal, Mf, Mv2v, Mv2t with /prefill, /full or +merge"""
    repetitions: int | None = None
    """timed repetitions per configuration (after one warm-up)"""
    decode_tokens: int | None = None
    """cached decode steps timed per repetition"""
    full_decode_tokens: int | None = None
    """cache-free decode steps for /full masks"""
    frame_tokens: int = 64
    """visual tokens per frame in the prompt layout"""
    threads: int = 1
    """torch intra-op threads (1 gives stable numbers)"""
    device: str = "cpu"
    """where the decoder (or, with --step, the policy) runs: cpu, cuda or cuda:N (GPU times are synchronised)"""
    hidden: int = 512
    layers: int = 8
    heads: int = 8
    kv_heads: int = 8
    intermediate: int = 1376
    vocab: int = 32000
    static_decode: bool = False
    """also time cached decoding on a fixed-capacity KV cache, replayed from a CUDA graph on a GPU (eager on
    a CPU), from the same prefill, and check that it picks the reference path's greedy tokens; with --step,
    the control step with that decoding (path ar-static)"""
    out: Path = Path("runs/latency")
    """folder for the JSON and PNG"""
    grpc: bool = False
    """instead: transport cost of Act (gRPC vs openpi msgpack/websockets vs pickle) and micro-batching
    throughput, on --checkpoint"""
    checkpoint: Path = Path("checkpoints/libero_spatial")
    """with --grpc or --step: the policy"""
    grpc_repeats: int = 50
    step: bool = False
    """instead: one control step (vision / prefill / decode) against one forward, per chunk length,
    autoregressive vs parallel action head, on --checkpoint's shape"""
    chunks: tuple[int, ...] = (1, 2, 4, 8, 16)
    """with --step"""
    step_repetitions: int = 15
    """with --step"""

    def validate(self) -> None:
        if self.grpc and self.step:
            raise ConfigError("--grpc and --step are two different benchmarks; choose one")
        if self.static_decode and self.grpc:
            raise ConfigError("--static-decode applies to the mask grid and --step, not to --grpc")
        check_masks(self.specs, "--specs")
        if (self.grpc or self.step) and not self.checkpoint.exists():
            raise ConfigError(f"checkpoint {self.checkpoint} does not exist")
        require_at_least(self, 1, "threads")
        if self.device != "cpu" and self.grpc:
            raise ConfigError("--device applies to the mask grid and --step; --grpc runs on the CPU")
        check_device(self.device)


@dataclass(kw_only=True)
class SoakConfig:
    """Load/soak the server: many episodes of valid traffic with a share of hostile requests mixed in.
    Exits 1 if a valid request failed or a bad one got anything but a client-error status."""

    checkpoint: Path = Path("checkpoints/libero_spatial")
    """policy to serve"""
    server: str | None = None
    """soak this address instead of starting a server"""
    episodes: int = 8
    """concurrent episodes (threads)"""
    seconds: float = 60.0
    bad_fraction: float = 0.2
    """share of requests drawn from the hostile classes"""
    image_size: int = 224
    """camera frames sent (pixels)"""
    server_threads: int = 1
    seed: int = 0
    out: Path = Path("runs/soak")
    """folder for soak.json"""

    def validate(self) -> None:
        if self.server is None and not self.checkpoint.exists():
            raise ConfigError(f"checkpoint {self.checkpoint} does not exist")
        if not 0 <= self.bad_fraction <= 1:
            raise ConfigError(f"--bad-fraction must be within [0, 1], got {self.bad_fraction}")
        if self.episodes < 1 or self.seconds <= 0:
            raise ConfigError("--episodes must be >= 1 and --seconds > 0")


@dataclass(kw_only=True)
class MasksConfig:
    """Print which keys each query may see under a mask (rows are queries, # = may attend)."""

    layout: str = "T4 V4 T2 V4 T3"
    """token layout: runs of text (T) and visual (V) tokens"""
    mask: str = "Mf"
    """causal, Mf, Mv2v, Mv2t (optionally /full or +merge(...))"""

    def validate(self) -> None:
        check_masks((self.mask,), "--mask")


@dataclass(kw_only=True)
class ScaleoutConfig:
    """Episode throughput per backend and worker count: the same episodes through the policy server with
    worker processes and with Ray actors (--ray local), 1..N workers. Writes scaleout.json + scaleout.png."""

    benchmark: Literal["libero", "babyai"] = "libero"
    checkpoint: Path | None = None
    """policy (default: checkpoints/libero_spatial or checkpoints/babyai_opendoors)"""
    workers: tuple[int, ...] = (1, 2)
    backends: tuple[Literal["processes", "ray"], ...] = ("processes", "ray")
    episodes: int = 8
    """episodes per configuration (LIBERO: tasks 0.. from held-out initial state 10; BabyAI: seeds 100000..)"""
    max_steps: int | None = None
    """cap per episode (default: the protocol's)"""
    server_threads: int = 1
    out: Path = Path("runs/scaleout")
    """folder for scaleout.json, scaleout.png and one evaluation folder per configuration"""

    def validate(self) -> None:
        require_at_least(self, 1, "episodes", "max_steps", "server_threads")
        if not self.workers or min(self.workers) < 1:
            raise ConfigError("--workers: give worker counts >= 1")
        if self.benchmark == "libero" and self.episodes > 10:
            raise ConfigError("--episodes: at most 10 for libero (one per task, held-out initial state 10)")
        if self.checkpoint is not None and not self.checkpoint.exists():
            raise ConfigError(f"checkpoint {self.checkpoint} does not exist")
