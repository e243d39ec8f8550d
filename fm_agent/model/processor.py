"""Observations to model inputs, for serving and training alike: prompt ids, pixels, padding, batches.

The prompt layout is described on :class:`~fm_agent.model.configuration_vla.VLAConfig`. Training
(``fm_agent.training.loop.make_batch``) and serving (``VLAPolicy.prepare`` / ``predict_prepared``)
build their inputs here, so a served prompt is exactly the prompt the model was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from .action_tokenizer import ActionTokenizer
from .configuration_vla import VLAConfig
from .history import Frame, padded
from .text_tokenizer import ACTION, BOS, FRAME, IMAGE, INSTRUCTION, PROPRIO, QUERY, proprio_token, words


@dataclass
class Observation:
    """One control step's input: frames oldest first (the last is the current one)."""

    frames: Sequence[Frame]
    instruction: str
    proprio: np.ndarray | None = None
    # Action sampling: 0 = greedy. A deterministic policy that reads a short history can loop forever
    # in a partially observed world (turn left, turn right, ...); sampling from its own distribution
    # breaks such loops. ``generator`` makes an episode's draws reproducible.
    temperature: float = 0.0
    generator: torch.Generator | None = None
    # Vision features already computed for some frames (aligned with ``frames``; None = encode it):
    # an episode's history keeps each frame's features from the step it arrived.
    features: Sequence[torch.Tensor | None] | None = None


@dataclass
class PreparedObservation:
    """An observation checked and turned into model inputs, ready to join a batch."""

    prompt: list[int]  # ids, no padding
    pixels: torch.Tensor  # (history * cameras, 3, S, S) in [-1, 1]
    temperature: float = 0.0
    generator: torch.Generator | None = None
    # Per history slot (padded like the frames): cached (cameras, tokens, hidden) features, or None.
    features: list[torch.Tensor | None] | None = None
    # Per history slot: the index of the first slot holding the same frame (a young episode repeats its
    # oldest frame), so one frame is encoded once.
    same_as: list[int] | None = None


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the camera image resized the way the model's pixels are made.

    Frames of any size are accepted and fitted once, when they arrive; the history then holds
    model-sized frames only, so a camera that changes resolution mid-episode costs nothing and an
    episode's memory does not depend on what a client sends.
    """
    if image.shape[0] == size and image.shape[1] == size:
        return image
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    pixels = torch.nn.functional.interpolate(
        pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return pixels[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The id of one token (``convert_tokens_to_ids`` is typed for lists too)."""
    value = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(value, int):
        raise ValueError(f"the tokenizer has no single id for {token!r}")
    return value


class VLAProcessor:
    """The tokenizer and the prompt conventions of one policy; ``max_positions`` is its context length."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, config: VLAConfig, max_positions: int) -> None:
        self.tokenizer, self.config, self.max_positions = tokenizer, config, max_positions
        self.actions = ActionTokenizer.from_dict(config.action_tokenizer)
        self.image_token_id = token_id(tokenizer, IMAGE)
        self._ids = {t: token_id(tokenizer, t) for t in (BOS, FRAME, INSTRUCTION, PROPRIO, ACTION, QUERY)}
        self._proprio_base = token_id(tokenizer, proprio_token(0))
        if config.action_head == "parallel" and self._ids[QUERY] in (None, tokenizer.unk_token_id):
            raise ValueError(f"action_head 'parallel' needs the {QUERY} token, which this checkpoint's tokenizer lacks")

    def prompt_ids(self, instruction: str, proprio: np.ndarray | None) -> list[int]:
        if not instruction or not instruction.strip():
            raise ValueError("the instruction is empty")
        if self.config.instruction_tokens == "tokenizer":
            words_ids = self.tokenizer(instruction, add_special_tokens=False)["input_ids"]
        else:
            words_ids = self.tokenizer.convert_tokens_to_ids(words(instruction))
        text = [self._ids[INSTRUCTION], *cast(list[int], words_ids)]
        frame = [self._ids[FRAME], *[self.image_token_id] * (self.config.tokens_per_image * len(self.config.cameras))]
        frames = frame * self.config.history
        ids = [self._ids[BOS], *(text + frames if self.config.prompt_order == "instruction_first" else frames + text)]
        if self.config.proprio_dim:
            ids.append(self._ids[PROPRIO])
            ids += (self.proprio_bins(proprio) + self._proprio_base).tolist()
        ids.append(self._ids[ACTION])
        if self.config.action_head == "parallel":
            ids += [self._ids[QUERY]] * self.actions.tokens_per_call
        return ids

    def proprio_bins(self, proprio: np.ndarray | None) -> np.ndarray:
        if proprio is None:
            raise ValueError(f"this policy needs proprio ({self.config.proprio_dim} floats)")
        proprio = np.asarray(proprio, dtype=np.float64).reshape(-1)
        if proprio.shape[0] != self.config.proprio_dim or not np.all(np.isfinite(proprio)):
            raise ValueError(f"proprio must be {self.config.proprio_dim} finite floats, got {proprio.shape[0]}")
        low, high = np.asarray(self.config.proprio_low), np.asarray(self.config.proprio_high)
        unit = np.clip((proprio - low) / np.maximum(high - low, 1e-6), 0, 1)
        return np.minimum((unit * self.config.proprio_bins).astype(np.int64), self.config.proprio_bins - 1)

    def check_frame(self, frame: Frame) -> dict[str, np.ndarray]:
        """The frame's cameras in config order, each fitted to the model's image size."""
        fitted = {}
        for camera in self.config.cameras:
            if camera not in frame:
                raise ValueError(f"frame lacks camera {camera!r} (expected {self.config.cameras})")
            image = np.asarray(frame[camera])
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
                raise ValueError(f"camera {camera!r}: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
            fitted[camera] = fit_image(image, self.config.image_size)
        return fitted

    def pixel_values(self, frames: Sequence[Frame]) -> torch.Tensor:
        """(history * cameras, 3, S, S) in [-1, 1], frames oldest first, cameras in config order."""
        images = [image for frame in padded(frames, self.config.history) for image in self.check_frame(frame).values()]
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)

    def prompt_capacity(self) -> int:
        """How many instruction words the model's context holds beside the rest of the prompt and the
        decoded action tokens (the bound a server puts on instructions)."""
        context = self.max_positions
        fixed = len(self.prompt_ids("x", np.zeros(self.config.proprio_dim) if self.config.proprio_dim else None)) - 1
        return context - fixed - (0 if self.config.action_head == "parallel" else self.actions.tokens_per_call)

    def prepare(self, observation: Observation) -> PreparedObservation:
        """Validate one observation and build its model inputs; raises ValueError saying what is wrong."""
        frames = list(observation.frames)
        given = list(observation.features) if observation.features is not None else [None] * len(frames)
        if len(given) != len(frames):
            raise ValueError(f"{len(given)} feature entries for {len(frames)} frames")
        slots = padded(list(range(len(frames))), self.config.history)  # frame index of each history slot
        features = [given[i] for i in slots]
        same_as = [slots.index(i) for i in slots]
        return PreparedObservation(
            self.prompt_ids(observation.instruction, observation.proprio),
            self.pixel_values(frames),
            observation.temperature,
            observation.generator,
            features,
            same_as,
        )

    def encode(self, observations: Sequence[Observation | PreparedObservation]) -> dict[str, torch.Tensor]:
        """A left-padded batch: input_ids, attention_mask (B, L) and pixel_values (B * n_images, 3, S, S)."""
        prepared = [o if isinstance(o, PreparedObservation) else self.prepare(o) for o in observations]
        length = max(len(p.prompt) for p in prepared)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (length - len(p.prompt)) + p.prompt for p in prepared])
        attention_mask = torch.tensor([[0] * (length - len(p.prompt)) + [1] * len(p.prompt) for p in prepared])
        pixels = torch.cat([p.pixels for p in prepared])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixels}
