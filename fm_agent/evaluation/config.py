"""What an evaluation runs: LIBERO or BabyAI through the policy server, in process, or a diagnostic.

Light on purpose (no torch, no simulator): the CLI parses these for every sub-command. The checks
that need the simulators' catalogues (does the suite exist, are its files installed) run in
``fm_agent.evaluation.jobs`` before any server or simulator starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fm_agent_client.executor import ExecutorOptions

from ..jobs import ConfigError, check_device, check_masks, require_at_least


@dataclass(kw_only=True)
class ServerEvalConfig:
    """Episodes through the gRPC policy server (a local one, or --server): what every server-side evaluation shares."""

    checkpoint: Path = Path("checkpoints/libero_spatial")
    """policy served by a local server"""
    server: tuple[str, ...] = ()
    """address(es) of running servers (host:port ...) instead of a local one; episodes are spread over them"""
    masks: tuple[str, ...] = ("causal",)
    """mask labels, several = a sweep over the same episodes: causal Mf Mf/full Mf+merge Mf+merge(k=5) ..."""
    seed: int = 1000
    """seed of episode 0 (episode i uses seed + i)"""
    max_steps: int | None = None
    """cap on control steps per episode (default: the protocol's)"""
    success_within: tuple[int, ...] = ()
    """also count the successes reached within N steps (read off the same episodes)"""
    workers: int = 1
    """parallel simulator workers (processes here, or Ray actors with --ray)"""
    ray: str | None = None
    """run the simulator workers as Ray actors: 'local' starts a cluster on this machine, 'auto' joins the
    one the environment points to (RAY_ADDRESS), or a cluster address (HOST:PORT, ray://HOST:PORT)"""
    ray_servers: int = 1
    """with --ray and no --server: policy servers started as Ray actors (--server-threads CPUs each)"""
    stateless: bool = False
    """episodes keep their frame history on the client and send it every step (ActStateless), so any server
    answers any step: with several --server replicas the client balances every call and survives losing one"""
    videos: int = 0
    """save MP4s of the first N episodes per task and mask"""
    out: Path | None = None
    """results folder (resumable); default runs/<job name>"""
    server_threads: int | None = None
    """torch threads of the local server (default: the cores the simulator workers leave, at least 1)"""
    compile_decode: bool = False
    """the local server compiles its decode step (fm-agent serve --compile-decode: faster, equal to about 1e-5)"""
    static_decode: bool = False
    """the servers this run starts decode on a static cache (fm-agent serve --static-decode: CUDA graphs on a GPU)"""
    server_device: str = "cpu"
    """where the servers this run starts put the policy: cpu, cuda or cuda:N (with --ray: cpu or cuda, and each
    server actor asks Ray for one GPU)"""
    retries: int = 1
    """re-runs of an episode after a server/env failure"""
    temperature: float | None = None
    """action sampling temperature, 0 = greedy (default: the checkpoint's own); each episode's seed seeds its draws"""
    executor: Literal["off", "latest", "average", "ensemble"] = "off"
    """execute chunks with the client's ChunkExecutor, merging overlapping chunks this way (off: each chunk
    open-loop, then the next call, as before)"""
    prefetch: int = 0
    """with --executor: ask for the next chunk when this many actions are left (0: when the queue is empty)"""
    control_hz: float | None = None
    """with --executor: execute at this fixed rate (default: as fast as the simulator steps)"""
    simulated_latency_ms: float | None = None
    """with --executor and --control-hz: run the control loop on a simulated clock where a tick takes exactly
    one period whatever the simulator costs, and each policy call arrives this many ms after its observation
    (for simulators slower than real time; default: the wall clock)"""

    def executor_options(self) -> ExecutorOptions | None:
        if self.executor == "off":
            return None
        return ExecutorOptions(
            control_hz=self.control_hz,
            prefetch_threshold=self.prefetch,
            aggregate=self.executor,
            simulated_latency_ms=self.simulated_latency_ms,
        )

    def server_flags(self) -> tuple[str, ...]:
        """The ``fm-agent serve`` flags of a local server this run starts."""
        flags = ["--compile-decode"] if self.compile_decode else []
        flags += ["--static-decode"] if self.static_decode else []
        flags += ["--device", self.server_device] if self.server_device != "cpu" else []
        return tuple(flags)

    def validate(self) -> None:
        if self.executor == "off" and (
            self.prefetch or self.control_hz is not None or self.simulated_latency_ms is not None
        ):
            raise ConfigError(
                "--prefetch, --control-hz and --simulated-latency-ms need --executor latest|average|ensemble"
            )
        try:
            options = self.executor_options()
            if options is not None:
                options.check()
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.compile_decode and (self.server or self.ray is not None):
            raise ConfigError("--compile-decode configures the local server: start --server ones with it yourself")
        if (self.static_decode or self.server_device != "cpu") and self.server:
            raise ConfigError("--static-decode and --server-device configure the servers this run starts: "
                              "start --server ones with them yourself")  # fmt: skip
        if self.static_decode and self.compile_decode:
            raise ConfigError("--static-decode is a decode path of its own: drop --compile-decode")
        if self.ray is None:
            check_device(self.server_device, "--server-device")
        elif self.server_device not in ("cpu", "cuda"):
            raise ConfigError(f"--server-device with --ray: give cpu or cuda (Ray picks each actor's GPU), got "
                              f"{self.server_device!r}")  # fmt: skip
        check_masks(self.masks)
        require_at_least(self, 1, "workers", "max_steps", "server_threads", "ray_servers")
        if self.ray is not None and not self.ray.strip():
            raise ConfigError("--ray: give local, auto or a cluster address")
        bad = [a for a in self.server if a.rpartition(":")[0] == "" or not a.rpartition(":")[2].isdigit()]
        if bad:
            raise ConfigError(f"--server {bad[0]!r}: give HOST:PORT")
        require_at_least(self, 0, "retries", "videos")
        if self.temperature is not None and not 0 <= self.temperature <= 100:
            raise ConfigError(f"--temperature must be within [0, 100], got {self.temperature}")
        if not self.server and not self.checkpoint.exists():
            raise ConfigError(f"checkpoint {self.checkpoint} does not exist")


@dataclass(kw_only=True)
class LiberoEvalConfig(ServerEvalConfig):
    """LIBERO through the policy server, standard protocol: each episode restores one of the task's 50
    official initial states, waits 10 no-op steps and runs for at most the suite's step budget (220
    spatial, 280 object, 300 goal, 520 libero_10, 400 libero_90). Re-running resumes."""

    suite: str = "libero_spatial"
    """any bundled suite, LIBERO-PRO variants included"""
    tasks: tuple[int, ...] | None = None
    """task indices (default: all)"""
    init_states: tuple[int, ...] | None = None
    """initial-state indices (default: 0..episodes-1)"""
    episodes: int = 50
    """initial states per task when --init-states is not given"""
    image_size: int | None = None
    """camera size (default: the checkpoint's)"""
    render: Literal["full", "none"] = "full"
    """'none' = no cameras, for smoke tests of the loop only (never for reported numbers)"""

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "episodes")
        require_at_least(self, 8, "image_size")
        bad = [s for s in self.init_states or () if not 0 <= s < 50]
        if bad:
            raise ConfigError(f"--init-states: {bad[0]} is not one of the 50 official initial states (0-49)")

    def states(self) -> list[int]:
        return list(self.init_states) if self.init_states is not None else list(range(self.episodes))


@dataclass(kw_only=True)
class BabyAIEvalConfig(ServerEvalConfig):
    """BabyAI levels (the ALFRED-style world) through the policy server. Re-running resumes."""

    checkpoint: Path = Path("checkpoints/babyai_opendoors")
    """policy served by a local server"""
    levels: tuple[str, ...] | None = None
    """BabyAI level ids (default: the levels the checkpoint was trained on, from its fm_agent_policy.json)"""
    episodes: int = 20
    """episodes per level and mask"""
    image_size: int = 56

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "episodes")
        require_at_least(self, 8, "image_size")


@dataclass(kw_only=True)
class LocalEvalConfig:
    """Quick in-process evaluation (no server): success rate and latency per mask, or the random baseline."""

    checkpoint: Path | None = None
    random_baseline: bool = False
    """act uniformly at random instead of a checkpoint (the floor to read success rates against)"""
    env: tuple[str, ...]
    """environment name(s), e.g. libero:libero_spatial/0 babyai:BabyAI-GoToSeqS5R2-v0"""
    episodes: int = 20
    """episodes per environment and mask"""
    masks: tuple[str, ...] = ("causal",)
    """mask labels, e.g. causal Mf/prefill Mf+merge"""
    seed: int = 100_000
    """first episode seed (demonstrations use 0..)"""
    max_steps: int | None = None
    """cap on steps per episode (default: the environment's own)"""
    success_within: tuple[int, ...] = ()
    """also count the successes reached within N steps (read off the same episodes)"""
    threads: int = 1
    temperature: float | None = None
    """action sampling, 0 = greedy (default: the checkpoint's); episode i's draws are seeded with its seed"""
    out: Path = Path("runs/eval")
    image_size: int = 56
    """rendered image size with --random-baseline"""

    def validate(self) -> None:
        if (self.checkpoint is None) == (not self.random_baseline):
            raise ConfigError("give either --checkpoint or --random-baseline")
        if self.checkpoint is not None and not self.checkpoint.exists():
            raise ConfigError(f"checkpoint {self.checkpoint} does not exist")
        check_masks(self.masks)
        require_at_least(self, 1, "episodes", "max_steps")
        if not self.env:
            raise ConfigError("--env: give at least one environment")


@dataclass(kw_only=True)
class DoorErrorsConfig:
    """Where a BabyAI door-opening policy goes wrong: every toggle in front of a door, classified
    (target opened; a wrong door while the target is visible, was seen recently, or unseen; a door
    closed), per mask, on the same seeds and sampling draws as eval-local."""

    checkpoint: Path
    env: str = "babyai:BabyAI-OpenDoorsOrderN4-v0"
    """a BabyAI Open* level"""
    episodes: int = 100
    seed: int = 100_000
    """first episode seed"""
    masks: tuple[str, ...] = ("causal",)
    max_steps: int = 150
    temperature: float | None = None
    """default: the checkpoint's"""
    threads: int = 1
    out: Path = field(default=Path("runs/door_errors"))

    def validate(self) -> None:
        if not self.checkpoint.exists():
            raise ConfigError(f"checkpoint {self.checkpoint} does not exist")
        if not self.env.startswith("babyai:BabyAI-Open"):
            raise ConfigError(f"--env {self.env!r}: door errors are defined on BabyAI Open* levels")
        check_masks(self.masks)
        require_at_least(self, 1, "episodes")


@dataclass(kw_only=True)
class CompareConfig:
    """Success with 95 % CIs across evaluation summaries (each a summary.json of eval-babyai / eval-libero):
    one markdown row per (summary, mask), and a bar plot. E.g. the arms of a mask-training study."""

    summaries: tuple[Path, ...]
    """summary.json files (or their folders)"""
    labels: tuple[str, ...] = ()
    """a name per summary (default: its folder's name)"""
    out: Path = Path("runs/compare.png")
    """the plot (PNG); the table is printed and written beside it as .md"""
    masks: tuple[str, ...] = ()
    """only the rows evaluated under these masks (default: every mask of every summary)"""
    x: tuple[float, ...] = ()
    """a number per summary (training episodes, parameters, minutes of rendering): plot success against it"""
    x_label: str = "x"
    """the x axis's name, with --x"""
    log_x: bool = False
    """with --x: a logarithmic x axis (parameters, data sizes)"""

    def validate(self) -> None:
        if not self.summaries:
            raise ConfigError("--summaries: give at least one summary.json")
        for path in self.summaries:
            if not (path if path.suffix == ".json" else path / "summary.json").exists():
                raise ConfigError(f"--summaries: {path} is not a summary.json (or a folder holding one)")
        if self.labels and len(self.labels) != len(self.summaries):
            raise ConfigError(f"--labels: give one per summary ({len(self.summaries)}), got {len(self.labels)}")
        if self.x and len(self.x) != len(self.summaries):
            raise ConfigError(f"--x: give one per summary ({len(self.summaries)}), got {len(self.x)}")
        if not self.x and (self.log_x or self.x_label != "x"):
            raise ConfigError("--x-label and --log-x describe the --x axis: give --x, a number per summary")
        if self.log_x and any(v <= 0 for v in self.x):
            raise ConfigError("--log-x: every --x must be positive")
        if self.masks:
            check_masks(self.masks)
