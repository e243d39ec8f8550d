"""The benchmark jobs: ``fm-agent profile`` (masks, a control step, or the transport), ``soak``, ``masks``."""

from __future__ import annotations

from fm_agent_client.masks import FutureMaskSpec

from ..attention import allowed_matrix, render_allowed
from . import report, soak, step, transport
from .config import MasksConfig, ProfileConfig, SoakConfig
from .layouts import parse_layout


def run_profile(config: ProfileConfig, command: str = "") -> int:
    config.validate()
    if config.grpc:
        return transport.main(config.checkpoint, config.out, config.grpc_repeats, command)
    if config.step:
        return step.main(
            config.checkpoint,
            config.out,
            config.chunks,
            config.step_repetitions,
            config.threads,
            command,
            config.device,
            config.static_decode,
        )
    return report.write_profile(config, command)


def run_soak(config: SoakConfig, command: str = "") -> int:
    config.validate()
    return soak.write_soak(config, command)


def show_masks(config: MasksConfig, command: str = "") -> int:
    config.validate()
    visual = parse_layout(config.layout)
    spec = FutureMaskSpec.parse(config.mask)
    print(f"{spec.label} over {config.layout!r} (# = may attend; rows are queries)")
    print(render_allowed(allowed_matrix(visual, spec), visual))
    if spec.merge is not None:
        print("merge: the pattern above is pooled into the sink column; the final attention is causal")
    return 0
