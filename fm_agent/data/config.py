"""``fm-agent record`` and ``fm-agent dagger``: where demonstration data comes from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from envs.recording import parse_index_ranges

from ..jobs import ConfigError, require_at_least


def _ranges(values: tuple[str, ...] | None, flag: str) -> list[int] | None:
    """``("0-9", "15-49")`` -> [0, ..., 9, 15, ..., 49] (LIBERO's 50 official initial states)."""
    if not values:
        return None
    try:
        return parse_index_ranges(list(values), upper=50)
    except ValueError as error:
        raise ConfigError(f"{flag}: {error}") from None


@dataclass(kw_only=True)
class RecordConfig:
    """Record expert demonstrations (HDF5, one file per episode) or just measure expert success.
    Re-running the same command resumes: finished episodes (manifest.jsonl) are skipped."""

    envs: tuple[str, ...] | None = None
    """environment names, e.g. libero:libero_spatial/0 babyai:BabyAI-GoToLocal-v0 (or --suite)"""
    suite: str | None = None
    """every task of a LIBERO suite, e.g. libero_spatial (or --envs)"""
    tasks: tuple[int, ...] | None = None
    """with --suite: only these task indices"""
    episodes: int = 10
    """episodes per environment (LIBERO cycles its 50 initial states)"""
    init_states: tuple[str, ...] | None = None
    """LIBERO: record these official initial states (I or A-B, e.g. 0-9 15-49) instead of the first
    --episodes; keeps held-out evaluation states out of the data"""
    out: Path
    """output folder (resumable)"""
    workers: int = 1
    """worker processes (or Ray actors with --ray)"""
    ray: str | None = None
    """run the workers as Ray actors: 'local' (a cluster on this machine), 'auto' (RAY_ADDRESS) or an address"""
    chunk: int = 5
    """episodes per worker job (one env build per job)"""
    keep_failures: bool = False
    """also save episodes the expert failed"""
    save: bool = True
    """--no-save: measure expert success only, write no episodes"""
    image_size: int | None = None
    """camera / view size in pixels (default: the env's)"""
    render: Literal["full", "none"] | None = None
    """LIBERO: 'none' skips cameras (expert checks only)"""
    action_noise: float = 0.0
    """LIBERO: execute the expert's xyz action plus N(0, SIGMA) noise, keep the clean action as the label
    (DART: the data shows recoveries from small deviations)"""
    seed: int = 0
    """base seed; episode i uses seed + i"""
    render_every: int = 1
    """LIBERO: render the cameras only at steps 0, N, 2N, ... (N = the policy's chunk, which reads images
    only there; a rendered step costs about 16 blind ones on a CPU); training then samples those steps"""

    def validate(self) -> None:
        if (self.envs is None) == (self.suite is None):
            raise ConfigError("give exactly one of --envs and --suite")
        if self.tasks is not None and self.suite is None:
            raise ConfigError("--tasks goes with --suite")
        libero_only = self.suite is not None or all(name.startswith("libero:") for name in self.envs or ())
        if self.action_noise < 0 or (self.action_noise and not libero_only):
            raise ConfigError("--action-noise must be >= 0 and applies to LIBERO (continuous actions) only")
        if self.init_states and not libero_only:
            raise ConfigError("--init-states applies to LIBERO environments only")
        if self.render_every > 1 and (not libero_only or self.render == "none"):
            raise ConfigError("--render-every applies to LIBERO environments that render (not with --render none)")
        self.state_indices()
        require_at_least(self, 1, "episodes", "workers", "chunk", "render_every")

    def state_indices(self) -> list[int] | None:
        return _ranges(self.init_states, "--init-states")


@dataclass(kw_only=True)
class DaggerConfig:
    """Collect DAgger data: the policy acts (a chunk per call, executed step by step), the expert labels
    each state (BabyAI's bot on BabyAI, the privileged-state scripted expert on LIBERO). Writes episodes
    in the demonstration format under --out/<env>/; re-running resumes. Then train on the
    demonstrations plus this folder, starting from the policy (fm-agent train --init)."""

    checkpoint: Path
    """the learner (an fm-agent policy)"""
    env: str | None = None
    """environment, e.g. babyai:BabyAI-OpenDoorsOrderN4-v0 or libero:libero_spatial/7 (default: the BabyAI
    level the checkpoint was trained on)"""
    suite: str | None = None
    """instead of --env: every task of a LIBERO suite (e.g. libero_spatial), all shared by the workers"""
    tasks: tuple[int, ...] | None = None
    """with --suite: only these task indices"""
    episodes: int = 1000
    """episodes per environment"""
    out: Path
    seed: int = 200000
    """episode i uses seed + i (keep clear of evaluation seeds)"""
    temperature: float | None = None
    """learner sampling temperature (default: the checkpoint's)"""
    beta: float = 0.0
    """probability that a step executes the expert's label"""
    max_steps: int | None = None
    """cap per episode (default: 64 for BabyAI, where loops repeat the same states; the task's budget for LIBERO)"""
    init_states: tuple[str, ...] | None = None
    """LIBERO: official initial states to start from (I or A-B), cycled (keep evaluation states out)"""
    image_size: int | None = None
    """LIBERO camera size (default: the env's; use the policy's)"""
    workers: int = 1
    """worker processes (or Ray actors with --ray), each building its env and learner"""
    ray: str | None = None
    """run the workers as Ray actors: 'local' (a cluster on this machine), 'auto' (RAY_ADDRESS) or an address"""
    keep_opened_doors: bool = False
    """BabyAI: the bot does not close a door the learner opened by mistake (it would teach the learner to close
    doors; harmless to leave open on non-strict levels such as OpenDoorsOrder)"""
    threads: int = 1
    """torch threads per worker"""
    blind_steps: bool = False
    """LIBERO: render the cameras only where the learner reads them (once per chunk); training then samples
    those steps only"""

    def validate(self) -> None:
        if not (self.checkpoint / "fm_agent_policy.json").exists():
            raise ConfigError(f"--checkpoint {self.checkpoint} is not an fm-agent policy (no fm_agent_policy.json)")
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"--beta must be within [0, 1], got {self.beta}")
        if self.suite is not None and self.env is not None:
            raise ConfigError("give --env or --suite, not both")
        if self.tasks is not None and self.suite is None:
            raise ConfigError("--tasks goes with --suite")
        self.state_indices()  # whether the environment is LIBERO is checked by the runner, once --env is resolved
        require_at_least(self, 1, "episodes", "workers", "threads")

    def state_indices(self) -> list[int] | None:
        return _ranges(self.init_states, "--init-states")
