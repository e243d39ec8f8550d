"""What one request may ask of the server, checked before any work is done.

Each limit has a default here, a ``fm-agent serve`` flag and an error message that names it, so a
client that is refused learns which knob it hit. Sizes that the model decides (how many instruction
words its context holds, how wide a merge window the prompt allows) are derived from the loaded
policy at start-up; the flags can only lower them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

MERGE_BOUND = "the prompt's length"


@dataclass(frozen=True)
class Limits:
    # An instruction is bounded twice: by characters before it is split into words (so splitting a
    # megabyte never happens), then by words against what the model's context holds.
    max_instruction_chars: int = 2048
    max_instruction_words: int | None = None
    """default: all the model's context holds beside frames, proprio and actions (VLAPolicy.prompt_capacity)"""
    # One camera image, read from the PNG/JPEG header before anything is decoded. 1 MP covers the
    # 224x224 to 640x480 frames robot cameras send; the model fits every frame to its own size.
    max_image_pixels: int = 1024 * 1024
    """width x height of one camera image (PNG/JPEG: read from the header)"""
    max_image_side: int = 4096
    # Act requests waiting for (or inside) the model worker, all episodes together. Beyond it a
    # request is refused at once with RESOURCE_EXHAUSTED instead of queueing behind minutes of work.
    max_queued_requests: int = 64
    """Act requests waiting for the model, all episodes together (then RESOURCE_EXHAUSTED)"""
    # Concurrent RPCs the server accepts (gRPC refuses more with RESOURCE_EXHAUSTED); together with
    # the message size this bounds the memory held by requests in flight.
    max_concurrent_rpcs: int = 128
    # The model worker is declared stalled (health NOT_SERVING, new Acts UNAVAILABLE) when one batch
    # has been running this long; it must exceed the slowest legitimate batch of the served model.
    stall_timeout_s: Annotated[float, tyro.conf.arg(name="stall-timeout")] = 60.0
    """seconds one batch may run before health says NOT_SERVING and Acts fail fast"""

    def __post_init__(self) -> None:
        for name in (
            "max_instruction_chars",
            "max_image_pixels",
            "max_image_side",
            "max_queued_requests",
            "max_concurrent_rpcs",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_instruction_words is not None and self.max_instruction_words < 1:
            raise ValueError(f"max_instruction_words must be >= 1, got {self.max_instruction_words}")
        if self.stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {self.stall_timeout_s}")

    def instruction_words(self, capacity: int) -> int:
        """The word limit in force for a model whose context holds ``capacity`` instruction words."""
        if capacity < 1:
            raise ValueError(f"the model's context ({capacity} words left) cannot hold an instruction")
        return capacity if self.max_instruction_words is None else min(capacity, self.max_instruction_words)


def shorten(text: str, limit: int = 64) -> str:
    """A client-supplied string as it may appear in an error message or a log line."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"
