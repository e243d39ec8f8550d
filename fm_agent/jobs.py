"""Every job the package runs, by name: its config dataclass and its runner.

A job is a frozen-ish config dataclass (in a light ``config`` module of its concern's folder, so the
CLI can list and parse every job without importing torch) and a runner ``run(config, command) ->
exit code`` (in that folder's ``jobs`` module, imported only when the job runs). The ``fm-agent`` CLI
derives one sub-command per entry, flags from the dataclass fields; ``launch/*.py`` are shims over
the same entries. ``command`` is the command line to record in results.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fm_agent_client.masks import FutureMaskSpec


class ConfigError(ValueError):
    """A config that cannot run, found before anything started (no server, no simulator, no episode)."""


def check_masks(labels: tuple[str, ...], flag: str = "--masks") -> None:
    """Every label parses (``causal``, ``Mf/full``, ``Mf+merge(k=5)``, ...), else ConfigError."""
    if not labels:
        raise ConfigError(f"{flag}: give at least one mask")
    for label in labels:
        try:
            FutureMaskSpec.parse(label)
        except ValueError as error:
            raise ConfigError(f"{flag}: {error}") from None


def require_at_least(config: object, low: int, *fields: str) -> None:
    """Each named field of ``config`` is >= ``low`` (None means "not given" and passes), else ConfigError
    naming its flag."""
    for name in fields:
        value = getattr(config, name)
        if value is not None and value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def check_device(device: str, flag: str = "--device") -> None:
    """Refuse a device this process cannot use before any model loads (ConfigError naming why, and the
    ``flag`` that asked for it)."""
    if device == "cpu":
        return  # without importing torch, which a driver process may not need at all
    import torch  # noqa: PLC0415  (building a config must not import torch: the CLI starts fast)

    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"{flag} must be cpu, cuda or cuda:N, got {device!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {device}: torch {torch.__version__} sees no CUDA device")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


@dataclass(frozen=True)
class Job:
    config: str  # "module:Class"
    runner: str  # "module:function"
    help: str

    def config_class(self) -> type:
        return _resolve(self.config)

    def run(self, config: Any, command: str) -> int:
        runner: Callable[[Any, str], int] = _resolve(self.runner)
        return runner(config, command)


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


JOBS: dict[str, Job] = {
    "serve": Job(
        "fm_agent.serving.config:ServeConfig", "fm_agent.serving.jobs:run_serve", "run the gRPC policy server"
    ),
    "eval-libero": Job(
        "fm_agent.evaluation.config:LiberoEvalConfig",
        "fm_agent.evaluation.jobs:run_libero_eval",
        "success rate and latency on LIBERO through the policy server (standard protocol)",
    ),
    "eval-babyai": Job(
        "fm_agent.evaluation.config:BabyAIEvalConfig",
        "fm_agent.evaluation.jobs:run_babyai_eval",
        "success rate and latency on BabyAI (the ALFRED-style world) through the policy server",
    ),
    "eval-local": Job(
        "fm_agent.evaluation.config:LocalEvalConfig",
        "fm_agent.evaluation.jobs:run_local_eval",
        "quick in-process evaluation of a checkpoint or the random baseline (no server)",
    ),
    "compare": Job(
        "fm_agent.evaluation.config:CompareConfig",
        "fm_agent.evaluation.compare:run_compare",
        "evaluation summaries side by side: a table and a plot of success with 95 % CIs",
    ),
    "door-errors": Job(
        "fm_agent.evaluation.config:DoorErrorsConfig",
        "fm_agent.evaluation.diagnostics:run_door_errors",
        "diagnostic: classify every door toggle of a BabyAI Open* policy",
    ),
    "train": Job(
        "fm_agent.training.config:TrainConfig",
        "fm_agent.training.jobs:run_train",
        "behaviour cloning on recorded demonstrations",
    ),
    "import": Job(
        "fm_agent.training.config:ImportConfig",
        "fm_agent.training.jobs:run_import",
        "turn your own transformers VLM folder into a servable policy",
    ),
    "record": Job(
        "fm_agent.data.config:RecordConfig",
        "fm_agent.data.jobs:run_record",
        "record expert demonstrations (or measure expert success)",
    ),
    "dagger": Job(
        "fm_agent.data.config:DaggerConfig",
        "fm_agent.data.jobs:run_dagger",
        "DAgger: the policy acts, the expert labels every state it visits",
    ),
    "profile": Job(
        "fm_agent.profiling.config:ProfileConfig",
        "fm_agent.profiling.jobs:run_profile",
        "prefill/decode latency of every mask, a control step per chunk, or the transport (JSON + PNG)",
    ),
    "soak": Job(
        "fm_agent.profiling.config:SoakConfig",
        "fm_agent.profiling.jobs:run_soak",
        "load/soak the server: valid traffic mixed with hostile requests",
    ),
    "scaleout": Job(
        "fm_agent.profiling.config:ScaleoutConfig",
        "fm_agent.profiling.scaleout:run_scaleout",
        "episode throughput per backend (processes, Ray) and worker count (JSON + PNG)",
    ),
    "masks": Job(
        "fm_agent.profiling.config:MasksConfig",
        "fm_agent.profiling.jobs:show_masks",
        "print which keys each query may see under a mask",
    ),
}
