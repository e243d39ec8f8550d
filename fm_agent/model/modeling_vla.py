"""The VLA: a transformers LLaVA backbone, a word-level tokenizer and an action tokenizer.

``VLAPolicy.predict`` is the one verb the server and the evaluation loops use. Its processor
(``processor.py``) builds the multi-frame prompt; the policy then runs prefill and decoding of the
action tokens under the requested attention mask through the generation helpers
(``fm_agent.attention.generation``), constrained to action tokens, greedy or sampled, and returns
actions with a timing breakdown.

``predict`` is ``prepare`` (per observation: validation, prompt ids, pixels) followed by
``predict_prepared`` (one batched forward). The server calls the two apart, so a malformed request
is refused on its own before it can join, and fail, a batch of other clients' requests.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForImageTextToText,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..attention import FutureAttention, FutureMaskSpec, enable_future_attention
from ..attention.fast_decode import FastDecoder
from ..attention.generation import continue_decoding, prefill
from ..attention.static_decode import StaticCacheDecoder
from ..jobs import ConfigError
from .action_tokenizer import ActionTokenizer
from .checkpoint import CheckpointError, check_files, validate_policy
from .configuration_vla import POLICY_FILE, VLAConfig
from .history import Frame
from .processor import Observation, PreparedObservation, VLAProcessor, fit_image, token_id
from .text_tokenizer import IMAGE, build_tokenizer


@dataclass
class ActionResult:
    actions: np.ndarray  # (chunk, dims) float32 or (chunk,) int64
    tokens: np.ndarray  # (tokens_per_call,) ids; fewer for the FAST encoding
    timings_ms: dict[str, float]
    # The vision features of the observation's newest frame (cameras, tokens, hidden), for the caller to
    # keep with that frame in its EpisodeHistory; None when this step encoded pixels the reference way.
    frame_features: torch.Tensor | None = None


def step_generator(seed: int, step: int) -> torch.Generator:
    """The sampling stream of one control step: a pure function of (episode seed, step index).

    An episode's draws therefore never depend on how many calls came before (a cancelled, refused
    or retried step cannot shift the actions of later steps), and a replay with the same seed gives
    the same actions step for step.
    """
    state = np.random.SeedSequence([seed % 2**64, step % 2**64]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def build_backbone(
    config: VLAConfig, vocab_size: int, image_token_id: int, pad_token_id: int, seed: int = 0
) -> PreTrainedModel:
    """A randomly initialised transformers VLM of ``config.backbone``'s family and shape."""
    shape = config.backbone
    prompt_tokens = 16 + config.history * (1 + len(config.cameras) * config.tokens_per_image) + 64
    text_shape: dict[str, Any] = dict(
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
    torch.manual_seed(seed)
    if shape.family == "internvl":
        if (config.image_size // shape.patch_size) % 2:
            raise ValueError(
                f"internvl: image_size / patch_size = {config.image_size // shape.patch_size} patches per side must be "
                "even (pixel shuffle merges 2 x 2)"
            )
        internvl = InternVLConfig(  # type: ignore[call-arg]
            vision_config=InternVLVisionConfig(
                hidden_size=shape.vision_hidden,
                intermediate_size=4 * shape.vision_hidden,
                num_hidden_layers=shape.vision_layers,
                num_attention_heads=shape.vision_heads,
                image_size=[config.image_size, config.image_size],
                patch_size=[shape.patch_size, shape.patch_size],
            ),
            text_config=Qwen2Config(**text_shape),
            image_token_id=image_token_id,
            downsample_ratio=0.5,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            attn_implementation="sdpa",
        )
        return InternVLForConditionalGeneration(internvl)
    vision = SiglipVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=4 * shape.vision_hidden,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=config.image_size,
        patch_size=shape.patch_size,
    )
    llava = LlavaConfig(  # type: ignore[call-arg]
        vision_config=vision,
        text_config=LlamaConfig(**text_shape),
        image_token_id=image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        attn_implementation="sdpa",
    )
    return LlavaForConditionalGeneration(llava)


class VLAPolicy:
    """A loaded policy. Not thread-safe for concurrent ``predict`` calls on one instance unless the
    caller serialises them (the server runs one worker per model)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerFast,
        config: VLAConfig,
        fast_decode: bool = True,
        reuse_vision: bool = True,
        compile_decode: bool = False,
    ) -> None:
        self.model = enable_future_attention(model).eval()
        self.tokenizer = tokenizer
        self.config = config
        max_positions = model.config.get_text_config().max_position_embeddings
        self.processor = VLAProcessor(tokenizer, config, max_positions)
        self.actions = self.processor.actions
        self.image_token_id = self.processor.image_token_id
        # The exact fast decode step (fm_agent/attention/fast_decode.py) where the backbone allows it;
        # False, or an unsupported backbone, keeps transformers' own forward for every decode step.
        # compile_decode compiles that step (about 1.5x faster on a CPU, equal only to about 1e-5).
        self.fast_decoder: FastDecoder | StaticCacheDecoder | None = (
            FastDecoder(self.model, compile=compile_decode)
            if (fast_decode or compile_decode) and FastDecoder.supports(self.model)
            else None
        )
        # Each frame's vision features are computed once and reused while it stays in the history
        # (Observation.features); False encodes every frame of every step, as training does.
        self.reuse_vision = reuse_vision and hasattr(self.model.model, "get_image_features")
        # LLaVA's forward takes cached features as a list of (tokens, hidden) per image; InternVL-style
        # models take one (images, tokens, hidden) tensor.
        self._features_as_list = isinstance(self.model, LlavaForConditionalGeneration)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def use_static_decode(self, graph: bool | None = None) -> None:
        """Decode on a fixed-capacity KV cache (:class:`StaticCacheDecoder`), replayed from CUDA graphs
        when the model is on a GPU, where a decode step is bound by kernel launches; the same tokens as
        the exact fast step (tested), logits equal up to the attention kernel's summation order."""
        if self.parallel:
            raise ValueError("a parallel-head policy decodes nothing: its chunk comes from one forward")
        if not FastDecoder.supports(self.model):
            raise ValueError(
                f"static decoding needs a Llama text model under SDPA; this policy's backbone is "
                f"{type(self.model).__name__}"
            )
        self.fast_decoder = StaticCacheDecoder(self.model, graph=graph)

    def clock(self) -> float:
        """``time.perf_counter()`` once the device has finished what was queued: CUDA runs asynchronously,
        so without this a GPU step's prefill time would be its launch time and decoding would carry the rest."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @property
    def decode_path(self) -> str:
        """How action tokens are produced, for logs: parallel, reference, exact, compiled, static, cuda-graphs."""
        if self.parallel:
            return "parallel"
        if isinstance(self.fast_decoder, StaticCacheDecoder):
            return "cuda-graphs" if self.fast_decoder.graph else "static"
        if self.fast_decoder is None:
            return "reference"
        return "compiled" if self.fast_decoder.compiled else "exact"

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
        actions.offset = token_id(tokenizer, "<a0>")
        config.action_tokenizer = actions.to_dict()
        model = build_backbone(config, len(tokenizer), token_id(tokenizer, IMAGE), tokenizer.pad_token_id, seed)
        return cls(model, tokenizer, config)

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        self.config.save(folder)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        fast_decode: bool = True,
        reuse_vision: bool = True,
        validate: bool = True,
        compile_decode: bool = False,
        static_decode: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> VLAPolicy:
        """Load a checkpoint folder (format: fm_agent/model/checkpoint.py, docs/checkpoints.md).

        ``validate`` cross-checks the model, tokenizer and policy files and runs one dummy step, so a
        broken checkpoint fails here with a :class:`CheckpointError` naming the file and field, not at
        a client's first request. ``fast_decode=False`` keeps transformers' forward for every decode
        step and ``reuse_vision=False`` encodes every frame of every step (the reference paths).
        ``compile_decode`` compiles the fast step (:class:`FastDecoder`); the dummy step of ``validate``
        then pays the compile, not a client's first request. ``static_decode`` decodes on a fixed-capacity
        cache (:meth:`use_static_decode`; CUDA graphs on a GPU). ``device`` and ``dtype`` place the model
        (a checkpoint is stored in float32); inputs follow it, actions and tokens come back on the CPU."""
        folder = Path(folder)
        check_files(folder)
        try:
            config = VLAConfig.load(folder)
        except (TypeError, ValueError, KeyError) as error:
            raise CheckpointError(folder, POLICY_FILE, "contents", str(error)) from error
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        tokenizer.padding_side = "left"
        model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="sdpa", dtype=dtype)
        model.to(device)  # type: ignore[arg-type]  # in place; transformers types its wrapped .to oddly
        try:
            policy = cls(model, tokenizer, config, fast_decode, reuse_vision, compile_decode)
        except ValueError as error:
            raise CheckpointError(folder, POLICY_FILE, "contents", str(error)) from error
        if static_decode:
            try:
                policy.use_static_decode()
            except ValueError as error:
                raise ConfigError(f"{folder}: {error}") from None
        if validate:
            validate_policy(policy, folder)
        return policy

    # -- inputs (the processor's; kept here so a policy is one object to hand around) ---------------
    def prompt_ids(self, instruction: str, proprio: np.ndarray | None) -> list[int]:
        return self.processor.prompt_ids(instruction, proprio)

    def check_frame(self, frame: Frame) -> dict[str, np.ndarray]:
        return self.processor.check_frame(frame)

    def prompt_capacity(self) -> int:
        return self.processor.prompt_capacity()

    def prepare(self, observation: Observation) -> PreparedObservation:
        return self.processor.prepare(observation)

    def encode(self, observations: Sequence[Observation | PreparedObservation]) -> dict[str, torch.Tensor]:
        return self.processor.encode(observations)

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
        for name in ("input_ids", "attention_mask"):  # pixels move only where the vision tower reads them
            inputs[name] = inputs[name].to(self.device)
        visual = inputs["input_ids"] == self.image_token_id
        context = FutureAttention(spec, visual)
        t_pre = self.clock()
        model_inputs, newest = self._vision_inputs(observations, inputs, spec)
        if self.parallel:
            return self._predict_parallel(observations, inputs, model_inputs, newest, context, start, t_pre)
        logits, cache = prefill(
            self.model, context, inputs["input_ids"], attention_mask=inputs["attention_mask"], **model_inputs
        )
        t_prefill = self.clock()
        lo, hi = self.actions.token_range()
        constraint = self.actions.length_constraint(len(observations)) if self.actions.variable_length else None

        def choose(step_logits: torch.Tensor) -> torch.Tensor:
            logits = step_logits[:, lo:hi]  # action tokens only
            if constraint is None:
                return self._choose(logits, observations) + lo
            token = self._choose(constraint.mask(logits), observations)
            constraint.update(token)
            return token + lo

        decoded = (
            continue_decoding(
                self.model,
                context,
                logits,
                cache,
                inputs["input_ids"],
                self.actions.tokens_per_call,
                choose,
                inputs["attention_mask"],
                self.fast_decoder,
                done=None if constraint is None else lambda: constraint.done,
                **model_inputs,
            )
            .cpu()
            .numpy()
        )
        tokens = list(decoded) if constraint is None else constraint.split(decoded)
        end = self.clock()
        timings = {
            "preprocess_ms": (t_pre - start) * 1e3,
            "prefill_ms": (t_prefill - t_pre) * 1e3,
            "decode_ms": (end - t_prefill) * 1e3,
            "total_ms": (end - start) * 1e3,
        }
        return self._results(tokens, timings, newest)

    def _vision_inputs(
        self, observations: Sequence[PreparedObservation], inputs: dict[str, torch.Tensor], spec: FutureMaskSpec
    ) -> tuple[dict[str, Any], list[torch.Tensor | None]]:
        """The image inputs of the prompt's forward, and each observation's newest-frame features.

        With ``reuse_vision`` the vision tower runs only on frames that carry no features yet (each once,
        however often a young episode repeats it), and the model takes the features through its
        ``mm_encoder_outputs`` input; a frame's features do not depend on the other frames, so this is
        the same prompt. ``full`` decode mode recomputes from pixels at every token and keeps them.
        """
        if not self.reuse_vision or spec.needs_full_recompute:
            return {"pixel_values": self._pixels(inputs["pixel_values"])}, [None] * len(observations)
        cameras, history = len(self.config.cameras), self.config.history
        slots = []  # per observation: (features per slot, first slot of each slot's frame)
        for o in observations:
            slots.append((o.features or [None] * history, o.same_as or list(range(history))))
        missing = [(i, j) for i, (features, same) in enumerate(slots) for j in range(history)
                   if same[j] == j and features[j] is None]  # fmt: skip
        encoded: dict[tuple[int, int], torch.Tensor] = {}
        if missing:
            rows = torch.cat([observations[i].pixels[j * cameras : (j + 1) * cameras] for i, j in missing])
            rows = self._pixels(rows)
            images = self.model.model.get_image_features(pixel_values=rows).pooler_output  # [(tokens, hidden)]
            for n, key in enumerate(missing):
                encoded[key] = torch.stack(list(images[n * cameras : (n + 1) * cameras]))
        per_image: list[torch.Tensor] = []
        newest: list[torch.Tensor | None] = []
        for i, (features, same) in enumerate(slots):
            frames: list[torch.Tensor] = []
            for j in range(history):
                cached = features[same[j]]
                frames.append(cached if cached is not None else encoded[(i, same[j])])
            per_image += [image for frame in frames for image in frame.unbind(0)]
            newest.append(frames[-1])
        # each family reads pooler_output in get_image_features' own form (a list for LLaVA, a tensor otherwise)
        pooled = per_image if self._features_as_list else torch.stack(per_image)
        outputs = BaseModelOutputWithPooling(pooler_output=pooled)  # type: ignore[arg-type]
        return {"mm_encoder_outputs": {"image": outputs}}, newest

    def _pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel values as the vision tower takes them: on the model's device, in its dtype."""
        return pixels.to(self.device, self.model.dtype)

    def _predict_parallel(
        self,
        observations: Sequence[PreparedObservation],
        inputs: dict[str, torch.Tensor],
        model_inputs: dict[str, Any],
        newest: list[torch.Tensor | None],
        context: FutureAttention,
        start: float,
        t_pre: float,
    ) -> list[ActionResult]:
        """One forward over prompt + placeholders; action token j is read off placeholder j."""
        n = self.actions.tokens_per_call
        out = self.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            use_cache=False,
            future_attention=context,
            logits_to_keep=n,
            **model_inputs,
        )
        t_forward = self.clock()
        lo, hi = self.actions.token_range()
        logits = out.logits[:, -n:, lo:hi]  # (B, n, actions)
        tokens = torch.cat([self._choose(logits[:, j], observations) for j in range(n)], dim=-1) + lo
        end = self.clock()
        return self._results(
            list(tokens.cpu().numpy()),
            {
                "preprocess_ms": (t_pre - start) * 1e3,
                "prefill_ms": (t_forward - t_pre) * 1e3,
                "decode_ms": (end - t_forward) * 1e3,
                "total_ms": (end - start) * 1e3,
            },
            newest,
        )

    def _results(
        self, tokens: Sequence[np.ndarray], timings: dict[str, float], newest: list[torch.Tensor | None]
    ) -> list[ActionResult]:
        shape = (self.actions.chunk, self.actions.dims) if self.actions.kind == "continuous" else (self.actions.chunk,)
        return [
            ActionResult(self.actions.decode(t).reshape(shape), t, dict(timings), f) for t, f in zip(tokens, newest)
        ]

    @staticmethod
    def _choose(logits: torch.Tensor, observations: Sequence[PreparedObservation]) -> torch.Tensor:
        """(B, 1) indices into the action-token range."""
        token = logits.argmax(-1, keepdim=True)
        for row, observation in enumerate(observations):
            if observation.temperature > 0:
                # on the CPU, where the observation's generator lives: the same draw on every device
                probs = torch.softmax(logits[row].double().cpu() / observation.temperature, -1)
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


__all__ = [
    "ActionResult",
    "Observation",
    "PreparedObservation",
    "VLAPolicy",
    "build_backbone",
    "fit_image",
    "step_generator",
]
