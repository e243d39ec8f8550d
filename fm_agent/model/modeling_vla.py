"""The VLA: a transformers LLaVA backbone, a word-level tokenizer and an action tokenizer.

``VLAPolicy.predict_action`` is the one verb the server and the evaluation loops use. It builds
the multi-frame prompt, runs prefill and constrained greedy decoding of the action tokens under
the requested attention mask, and returns actions with a timing breakdown.

``predict`` is ``prepare`` (per observation: validation, prompt ids, pixels) followed by
``predict_prepared`` (one batched forward). The server calls the two apart, so a malformed request
is refused on its own before it can join, and fail, a batch of other clients' requests.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForImageTextToText,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from ..attention import FutureAttention, FutureMaskSpec, enable_future_attention
from ..attention.generation import decode_one_token, prefill
from .action_tokenizer import ActionTokenizer
from .configuration_vla import VLAConfig
from .text_tokenizer import (
    ACTION,
    BOS,
    FRAME,
    IMAGE,
    INSTRUCTION,
    PROPRIO,
    QUERY,
    build_tokenizer,
    proprio_token,
    words,
)

Frame = Mapping[str, np.ndarray]  # camera name -> (H, W, 3) uint8


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


@dataclass
class PreparedObservation:
    """An observation checked and turned into model inputs, ready to join a batch."""

    prompt: list[int]  # ids, no padding
    pixels: torch.Tensor  # (history * cameras, 3, S, S) in [-1, 1]
    temperature: float = 0.0
    generator: torch.Generator | None = None


@dataclass
class ActionResult:
    actions: np.ndarray  # (chunk, dims) float32 or (chunk,) int64
    tokens: np.ndarray  # (tokens_per_call,) ids
    timings_ms: dict[str, float]


def step_generator(seed: int, step: int) -> torch.Generator:
    """The sampling stream of one control step: a pure function of (episode seed, step index).

    An episode's draws therefore never depend on how many calls came before (a cancelled, refused
    or retried step cannot shift the actions of later steps), and a replay with the same seed gives
    the same actions step for step.
    """
    state = np.random.SeedSequence([seed % 2**64, step % 2**64]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


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


def build_backbone(
    config: VLAConfig, vocab_size: int, image_token_id: int, pad_token_id: int, seed: int = 0
) -> LlavaForConditionalGeneration:
    shape = config.backbone
    prompt_tokens = 16 + config.history * (1 + len(config.cameras) * config.tokens_per_image) + 64
    vision = SiglipVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=4 * shape.vision_hidden,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=config.image_size,
        patch_size=shape.patch_size,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max(512, 2 * prompt_tokens),
        pad_token_id=pad_token_id,
        tie_word_embeddings=True,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(llava)


class VLAPolicy:
    """A loaded policy. Not thread-safe for concurrent ``predict`` calls on one instance unless the
    caller serialises them (the server runs one worker per model)."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, config: VLAConfig) -> None:
        self.model = enable_future_attention(model).eval()
        self.tokenizer = tokenizer
        self.config = config
        self.actions = ActionTokenizer.from_dict(config.action_tokenizer)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
        self._ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (BOS, FRAME, INSTRUCTION, PROPRIO, ACTION, QUERY)}
        self._proprio_base = tokenizer.convert_tokens_to_ids(proprio_token(0))
        if self.parallel and self._ids[QUERY] in (None, tokenizer.unk_token_id):
            raise ValueError(f"action_head 'parallel' needs the {QUERY} token, which this checkpoint's tokenizer lacks")

    @property
    def parallel(self) -> bool:
        """True when one forward yields the whole chunk (``VLAConfig.action_head == "parallel"``)."""
        return self.config.action_head == "parallel"

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def create(cls, config: VLAConfig, instructions: Sequence[str], seed: int = 0) -> VLAPolicy:
        """A new, randomly initialised policy whose vocabulary covers ``instructions``."""
        actions = ActionTokenizer.from_dict(config.action_tokenizer)
        tokenizer = build_tokenizer(instructions, actions.bins, config.proprio_bins)
        actions.offset = tokenizer.convert_tokens_to_ids("<a0>")
        config.action_tokenizer = actions.to_dict()
        model = build_backbone(
            config, len(tokenizer), tokenizer.convert_tokens_to_ids(IMAGE), tokenizer.pad_token_id, seed
        )
        return cls(model, tokenizer, config)

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        self.config.save(folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> VLAPolicy:
        """Load an fm-agent checkpoint, or any local LLaVA-family folder that carries ``fm_agent_policy.json``."""
        folder = Path(folder)
        config = VLAConfig.load(folder)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        tokenizer.padding_side = "left"
        model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="sdpa")
        return cls(model, tokenizer, config)

    # -- prompt -----------------------------------------------------------------------------------
    def _history(self, frames: Sequence[Frame]) -> list[Frame]:
        if not frames:
            raise ValueError("an observation needs at least one frame")
        frames = list(frames)[-self.config.history :]
        return [frames[0]] * (self.config.history - len(frames)) + frames

    def prompt_ids(self, instruction: str, proprio: np.ndarray | None) -> list[int]:
        if not instruction or not instruction.strip():
            raise ValueError("the instruction is empty")
        text = [self._ids[INSTRUCTION], *self.tokenizer.convert_tokens_to_ids(words(instruction))]
        frame = [self._ids[FRAME], *[self.image_token_id] * (self.config.tokens_per_image * len(self.config.cameras))]
        frames = frame * self.config.history
        ids = [self._ids[BOS], *(text + frames if self.config.prompt_order == "instruction_first" else frames + text)]
        if self.config.proprio_dim:
            ids.append(self._ids[PROPRIO])
            ids += (self._proprio_bins(proprio) + self._proprio_base).tolist()
        ids.append(self._ids[ACTION])
        if self.parallel:
            ids += [self._ids[QUERY]] * self.actions.tokens_per_call
        return ids

    def _proprio_bins(self, proprio: np.ndarray | None) -> np.ndarray:
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
        images = [image for frame in self._history(frames) for image in self.check_frame(frame).values()]
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)

    def prompt_capacity(self) -> int:
        """How many instruction words the model's context holds beside the rest of the prompt and the
        decoded action tokens (the bound a server puts on instructions)."""
        context = self.model.config.get_text_config().max_position_embeddings
        fixed = len(self.prompt_ids("x", np.zeros(self.config.proprio_dim) if self.config.proprio_dim else None)) - 1
        return context - fixed - (0 if self.parallel else self.actions.tokens_per_call)

    def prepare(self, observation: Observation) -> PreparedObservation:
        """Validate one observation and build its model inputs; raises ValueError saying what is wrong."""
        return PreparedObservation(
            self.prompt_ids(observation.instruction, observation.proprio),
            self.pixel_values(observation.frames),
            observation.temperature,
            observation.generator,
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

    # -- acting -----------------------------------------------------------------------------------
    def predict(self, observations: Sequence[Observation], spec: FutureMaskSpec | None = None) -> list[ActionResult]:
        """Actions for a batch of observations under one mask spec (decoding constrained to action tokens;
        greedy, or sampled per observation with its ``temperature``)."""
        start = time.perf_counter()
        prepared = [self.prepare(o) for o in observations]
        results = self.predict_prepared(prepared, spec)
        extra = (time.perf_counter() - start) * 1e3 - results[0].timings_ms["total_ms"]
        for result in results:
            result.timings_ms["preprocess_ms"] += extra
            result.timings_ms["total_ms"] += extra
        return results

    @torch.no_grad()
    def predict_prepared(
        self, observations: Sequence[PreparedObservation], spec: FutureMaskSpec | None = None
    ) -> list[ActionResult]:
        """``predict`` for observations that ``prepare`` has checked already."""
        spec = spec or FutureMaskSpec.parse(self.config.default_mask)
        start = time.perf_counter()
        inputs = self.encode(observations)
        visual = inputs["input_ids"] == self.image_token_id
        context = FutureAttention(spec, visual)
        t_pre = time.perf_counter()
        model_inputs = {"pixel_values": inputs["pixel_values"]}
        if self.parallel:
            return self._predict_parallel(observations, inputs, context, start, t_pre)
        logits, cache = prefill(
            self.model, context, inputs["input_ids"], attention_mask=inputs["attention_mask"], **model_inputs
        )
        t_prefill = time.perf_counter()
        lo, hi = self.actions.token_range()
        sequence, mask, chosen = inputs["input_ids"], inputs["attention_mask"], []
        for step in range(self.actions.tokens_per_call):
            token = self._choose(logits[:, lo:hi], observations) + lo  # only action tokens are valid
            chosen.append(token)
            if step + 1 == self.actions.tokens_per_call:
                break
            sequence = torch.cat([sequence, token], dim=-1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
            logits = decode_one_token(self.model, context, sequence, cache, mask, **model_inputs)
        end = time.perf_counter()
        tokens = torch.cat(chosen, dim=-1).numpy()
        timings = {
            "preprocess_ms": (t_pre - start) * 1e3,
            "prefill_ms": (t_prefill - t_pre) * 1e3,
            "decode_ms": (end - t_prefill) * 1e3,
            "total_ms": (end - start) * 1e3,
        }
        return self._results(tokens, timings)

    def _predict_parallel(
        self,
        observations: Sequence[PreparedObservation],
        inputs: dict[str, torch.Tensor],
        context: FutureAttention,
        start: float,
        t_pre: float,
    ) -> list[ActionResult]:
        """One forward over prompt + placeholders; action token j is read off placeholder j."""
        n = self.actions.tokens_per_call
        out = self.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
            use_cache=False,
            future_attention=context,
            logits_to_keep=n,
        )
        t_forward = time.perf_counter()
        lo, hi = self.actions.token_range()
        logits = out.logits[:, -n:, lo:hi]  # (B, n, actions)
        tokens = torch.cat([self._choose(logits[:, j], observations) for j in range(n)], dim=-1) + lo
        end = time.perf_counter()
        return self._results(
            tokens.numpy(),
            {
                "preprocess_ms": (t_pre - start) * 1e3,
                "prefill_ms": (t_forward - t_pre) * 1e3,
                "decode_ms": (end - t_forward) * 1e3,
                "total_ms": (end - start) * 1e3,
            },
        )

    def _results(self, tokens: np.ndarray, timings: dict[str, float]) -> list[ActionResult]:
        shape = (self.actions.chunk, self.actions.dims) if self.actions.kind == "continuous" else (self.actions.chunk,)
        return [ActionResult(self.actions.decode(t).reshape(shape), t, dict(timings)) for t in tokens]

    @staticmethod
    def _choose(logits: torch.Tensor, observations: Sequence[PreparedObservation]) -> torch.Tensor:
        """(B, 1) indices into the action-token range."""
        token = logits.argmax(-1, keepdim=True)
        for row, observation in enumerate(observations):
            if observation.temperature > 0:
                probs = torch.softmax(logits[row].double() / observation.temperature, -1)
                token[row, 0] = torch.multinomial(probs, 1, generator=observation.generator)[0]
        return token

    def predict_action(
        self,
        frames: Sequence[Frame],
        instruction: str,
        proprio: np.ndarray | None = None,
        mask: str = "causal",
        decode_mode: str = "prefill",
        merge=None,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> ActionResult:
        """One observation; ``merge`` is a MergeOptions or None."""
        spec = FutureMaskSpec(mask=mask, decode_mode=decode_mode, merge=merge)  # type: ignore[arg-type]
        return self.predict([Observation(frames, instruction, proprio, temperature, generator)], spec)[0]
