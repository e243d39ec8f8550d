"""An episode's frame history: the one place that decides which frames a prompt shows.

Whoever runs an episode (the server's ``Episode``, the in-process actor) keeps one; the processor
pads a short history by the same rule. Frames are fitted to the model's size before they are
appended, so a history's memory is ``length x cameras x S x S x 3`` bytes whatever a client sends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

Frame = Mapping[str, np.ndarray]  # camera name -> (H, W, 3) uint8


def padded(frames: Sequence[Frame], length: int) -> list[Frame]:
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

    @property
    def length(self) -> int:
        return self._frames.maxlen or 0

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self):
        return iter(self._frames)

    def append(self, frame: Frame) -> None:
        self._frames.append(frame)

    def with_frame(self, frame: Frame) -> list[Frame]:
        """The history as it will be once ``frame`` is appended; the history itself is unchanged
        (the server commits a frame only after its step succeeded)."""
        return [*self._frames, frame][-self.length :]

    def clear(self) -> None:
        self._frames.clear()
