"""Observation pieces shared by the wrappers: images, proprio and the instruction as a Text space."""

from __future__ import annotations

import string

import numpy as np
from gymnasium import spaces

INSTRUCTION_CHARSET = string.ascii_letters + string.digits + string.punctuation + " "
MAX_INSTRUCTION_LENGTH = 512


def image_space(size: int) -> spaces.Box:
    """(size, size, 3) uint8 RGB."""
    return spaces.Box(0, 255, (size, size, 3), dtype=np.uint8)


def instruction_space() -> spaces.Text:
    return spaces.Text(max_length=MAX_INSTRUCTION_LENGTH, min_length=0, charset=INSTRUCTION_CHARSET)


def clean_instruction(text: str) -> str:
    """Instructions as the Text space accepts them (printable ASCII, bounded length)."""
    kept = "".join(c for c in text if c in INSTRUCTION_CHARSET)
    return kept[:MAX_INSTRUCTION_LENGTH]
