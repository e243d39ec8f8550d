"""An episode's frame history: the one place that decides which frames a prompt shows.

Whoever runs an episode (the server's ``Episode``, the in-process actor) keeps one; the processor
pads a short history by the same rule. Frames are fitted to the model's size before they are
appended, so a history's memory is ``length x cameras x S x S x 3`` bytes whatever a client sends.

Each frame may carry its vision features (the projected SigLIP output of each camera, computed the
step the frame arrived): later steps reuse them instead of encoding the frame again, so a step
encodes one new frame instead of ``length x cameras`` images. That adds ``length x cameras x
tokens x hidden x 4`` bytes (24 KiB a frame for the shipped LIBERO policy).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch

Frame = Mapping[str, np.ndarray]  # camera name -> (H, W, 3) uint8
T = TypeVar("T")


def padded(frames: Sequence[T], length: int) -> list[T]:
    """The last ``length`` frames, oldest first; a young episode repeats its oldest frame in front
    (what training shows the model at an episode's start: the recorded first frame, repeated)."""
    if not frames:
        raise ValueError("an observation needs at least one frame")
    kept = list(frames)[-length:]
    return [kept[0]] * (length - len(kept)) + kept


class EpisodeHistory:
    """The last ``length`` frames of one episode, oldest first."""

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"a history holds at least one frame, got {length}")
        self._frames: deque[Frame] = deque(maxlen=length)
        self._features: deque[torch.Tensor | None] = deque(maxlen=length)  # (cameras, tokens, hidden) each

    @property
    def length(self) -> int:
        return self._frames.maxlen or 0

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self):
        return iter(self._frames)

    def append(self, frame: Frame, features: torch.Tensor | None = None) -> None:
        """``features``: the frame's vision features, if the step that read it computed them."""
        self._frames.append(frame)
        self._features.append(features)

    def with_frame(self, frame: Frame) -> list[Frame]:
        """The history as it will be once ``frame`` is appended; the history itself is unchanged
        (the server commits a frame only after its step succeeded)."""
        return [*self._frames, frame][-self.length :]

    def features_with_new_frame(self) -> list[torch.Tensor | None]:
        """The cached features aligned with :meth:`with_frame` (None for the new frame, not encoded yet)."""
        return [*self._features, None][-self.length :]

    def clear(self) -> None:
        self._frames.clear()
        self._features.clear()
