"""Token layouts of VLA-like prompts: system text, frames interleaved with short text, instruction."""

from __future__ import annotations

import torch


def vla_layout(
    context: int,
    frame_tokens: int = 64,
    system_tokens: int = 16,
    separator_tokens: int = 4,
    instruction_tokens: int = 24,
) -> torch.Tensor:
    """(context,) bool visual flags: BOS + system text, then frames separated by text, then the instruction.

    Frames are added while they fit; the remainder before the instruction is text.
    """
    if context < 1 + system_tokens + instruction_tokens:
        raise ValueError(f"context {context} is too short for the system text and instruction")
    flags: list[bool] = [False] * (1 + system_tokens)
    budget = context - instruction_tokens
    while len(flags) + frame_tokens + separator_tokens <= budget:
        flags += [True] * frame_tokens + [False] * separator_tokens
    flags += [False] * (context - len(flags))
    return torch.tensor(flags)


def parse_layout(text: str) -> torch.Tensor:
    """``"T4 V4 T2 V4 T3"`` -> visual flags (T = text, V = visual, followed by a count)."""
    flags: list[bool] = []
    for part in text.split():
        kind, count = part[0].upper(), part[1:]
        if kind not in "TV" or not count.isdigit():
            raise ValueError(f"bad layout part {part!r}: expected T<count> or V<count>, e.g. 'T4 V16 T8'")
        flags += [kind == "V"] * int(count)
    if not flags:
        raise ValueError("empty layout")
    return torch.tensor(flags)
