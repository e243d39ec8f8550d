"""What a VLA checkpoint is, besides its transformers weights: saved as ``fm_agent_policy.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

POLICY_FILE = "fm_agent_policy.json"
PROMPT_ORDERS = ("frames_first", "instruction_first")
ACTION_HEADS = ("autoregressive", "parallel")


BACKBONE_FAMILIES = ("llava", "internvl")


@dataclass
class BackboneShape:
    """The backbone a new policy is built with.

    ``family`` "llava": SigLIP vision tower, two-layer projector, Llama decoder, one token per patch.
    "internvl": InternViT tower, pixel shuffle by 2 (four patches per token), MLP projector, Qwen2
    decoder; ``(image_size / patch_size)`` must be even.
    """

    family: str = "llava"
    hidden: int = 192
    layers: int = 4
    heads: int = 6
    kv_heads: int = 2
    intermediate: int = 512
    vision_hidden: int = 96
    vision_layers: int = 2
    vision_heads: int = 4
    patch_size: int = 8


@dataclass
class VLAConfig:
    """Prompt and action conventions of one policy.

    Prompt (ids), ``prompt_order = "frames_first"`` (LLaVA's order, the default): ``<bos>``, then for
    each of the last ``history`` steps, oldest first, ``<frame>`` followed by each camera's image
    placeholders (``(image_size / patch_size)^2`` each), then ``<instruction>`` + instruction words,
    then ``<proprio>`` + one bin token per proprio dimension (if any), then ``<action>``; the model
    continues with the action tokens. ``"instruction_first"`` moves ``<instruction>`` + words to just
    after ``<bos>`` (Octo's order): under the causal mask every image token then already sees the
    instruction, which is what the future-aware masks grant a frames-first prompt, so on such a
    checkpoint ``Mv2t`` has only the trailing prompt tokens left to add.
    At the start of an episode the oldest available frame is repeated to fill the history.

    ``history_stride`` is how many environment steps apart those frames were taken in training. A
    client that executes each returned chunk open-loop calls the policy once per chunk, so the frames
    the server keeps are ``chunk`` steps apart; training on consecutive frames instead would show the
    model a motion between frames four times smaller than the one it meets when deployed.
    ``launch/train_bc.py`` sets it to the chunk; checkpoints without the field were trained with 1.

    ``action_head``: ``"autoregressive"`` (the default, and every checkpoint without the field)
    decodes the chunk's action tokens one by one, one cached forward each. ``"parallel"`` (as
    OpenVLA-OFT does) appends one ``<query>`` placeholder per action token after ``<action>`` and
    reads every action token off its placeholder in the same forward as the prompt: a control step
    costs one forward, whatever the chunk. Placeholders carry no information, so visual rows that a
    future-aware mask lets see them learn nothing about the targets, which never enter the input.
    The FAST action encoding (a variable number of tokens per chunk) needs the autoregressive head.
    """

    env_family: str  # "babyai" | "libero"
    cameras: list[str]
    image_size: int
    history: int
    action_tokenizer: dict
    history_stride: int = 1
    proprio_dim: int = 0
    proprio_bins: int = 32
    proprio_low: list[float] = field(default_factory=list)
    proprio_high: list[float] = field(default_factory=list)
    backbone: BackboneShape = field(default_factory=BackboneShape)
    default_mask: str = "causal"
    prompt_order: str = "frames_first"  # or "instruction_first"; checkpoints without the field are frames-first
    temperature: float = 0.0  # action sampling temperature used when a caller does not choose one (0 = greedy)
    action_head: str = "autoregressive"  # or "parallel": the whole chunk from one forward
    # Placeholders per image when the vision path does not yield (image_size / patch_size)^2 features
    # (a CLIP tower that drops its CLS token, a pixel-shuffle projector); set by ``fm-agent import``.
    image_tokens: int | None = None
    # "words": fm-agent's word-level tokenizer, one id per lower-cased word; "tokenizer": the
    # checkpoint's own tokenizer splits the instruction (imported VLMs keep theirs).
    instruction_tokens: str = "words"
    training: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.history_stride < 1:
            raise ValueError(f"history_stride must be >= 1, got {self.history_stride}")
        if self.action_head not in ACTION_HEADS:
            raise ValueError(f"action_head must be one of {ACTION_HEADS}, got {self.action_head!r}")
        if self.action_head == "parallel" and self.action_tokenizer.get("encoding") == "fast":
            raise ValueError("action_head 'parallel' needs a fixed number of action tokens; the FAST encoding has none")
        if self.backbone.family not in BACKBONE_FAMILIES:
            raise ValueError(f"backbone.family must be one of {BACKBONE_FAMILIES}, got {self.backbone.family!r}")
        if self.instruction_tokens not in ("words", "tokenizer"):
            raise ValueError(f"instruction_tokens must be 'words' or 'tokenizer', got {self.instruction_tokens!r}")
        if self.prompt_order not in PROMPT_ORDERS:
            raise ValueError(f"prompt_order must be one of {PROMPT_ORDERS}, got {self.prompt_order!r}")

    def save(self, folder: Path) -> None:
        (Path(folder) / POLICY_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> VLAConfig:
        path = Path(folder) / POLICY_FILE
        if not path.exists():
            raise FileNotFoundError(f"{folder} has no {POLICY_FILE}: not an fm-agent policy checkpoint")
        data = json.loads(path.read_text())
        data["backbone"] = BackboneShape(**data.get("backbone", {}))
        return cls(**data)

    @property
    def tokens_per_image(self) -> int:
        if self.image_tokens is not None:
            return self.image_tokens
        patches = (self.image_size // self.backbone.patch_size) ** 2
        return patches // 4 if self.backbone.family == "internvl" else patches
