"""``fm-agent train``: behaviour cloning on recorded demonstrations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..jobs import ConfigError, check_masks, require_at_least


@dataclass(kw_only=True)
class TrainConfig:
    """Train a VLA by behaviour cloning on recorded expert demonstrations (clean, DART, DAgger folders).

    Re-running with the same --out resumes from its training_state.pt (--fresh starts over); --init
    starts from a policy's weights (e.g. after a DAgger round)."""

    preset: Literal["babyai", "libero"]
    """prompt and action conventions (fm_agent/model/presets.py; this module stays torch-free, so the names are
    listed here too and a test keeps the two equal)"""
    data: tuple[Path, ...]
    """folder(s) of recorded episodes, e.g. clean and DART demonstrations"""
    out: Path
    """checkpoint folder"""
    history: int | None = None
    """frames per camera in the prompt (K; default: the preset's)"""
    chunk: int | None = None
    """actions predicted per call (default: the preset's)"""
    history_stride: int | None = None
    """steps between the history frames of a training sample (default: the chunk, as a client executing
    whole chunks calls once per chunk)"""
    image_size: int | None = None
    bins: int = 256
    """bins per continuous action dimension (--action-encoding bins)"""
    action_encoding: Literal["bins", "fast"] = "bins"
    """continuous actions as one binned token per dimension per action, or FAST: a DCT over the chunk,
    rounding and BPE fitted on these demonstrations, a variable and smaller number of tokens per chunk
    (autoregressive head only)"""
    fast_scale: float = 10.0
    """FAST: DCT coefficients are multiplied by this before rounding (larger: finer, more tokens)"""
    fast_vocab: int = 1024
    """FAST: BPE vocabulary size (the action tokens)"""
    backbone: Literal["llava", "internvl"] = "llava"
    """transformers family of a new policy: LLaVA (SigLIP + Llama) or InternVL (InternViT, pixel shuffle, Qwen2)"""
    patch: int | None = None
    """vision patch size (default: the preset's; internvl needs an even number of patches per side)"""
    hidden: int = 192
    layers: int = 4
    heads: int = 6
    kv_heads: int = 2
    prompt_order: Literal["frames_first", "instruction_first"] = "frames_first"
    """where the instruction goes: after the frames (LLaVA's order; the future-aware masks let image tokens
    see it) or before them (image tokens see it under the causal mask too)"""
    action_head: Literal["autoregressive", "parallel"] = "autoregressive"
    """decode the chunk's action tokens one by one, or read them all off placeholders in the prompt's
    forward (one forward per control step)"""
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    train_mask: tuple[str, ...] = ("causal",)
    """training-time mask label(s); several: one drawn per batch"""
    image_shift: int = 0
    """random-shift augmentation: move each camera view by up to this many pixels per training sample
    (DrQ; 4 for 64x64 LIBERO views); 0 = off"""
    max_episodes: int | None = None
    """use at most this many episodes"""
    val_fraction: float = 0.05
    validate_every: int = 250
    max_minutes: float | None = None
    """stop after this much training time"""
    keep_best: bool = False
    """save the weights of the validation step with the lowest loss instead of the last step's (small data
    overfits: a LIBERO policy on 74 episodes was best at step 500 of 1,500)"""
    threads: int = 2
    seed: int = 0
    fresh: bool = False
    """ignore an existing training state in --out"""
    init: Path | None = None
    """start from this policy (weights, tokenizers, prompt layout); the shape options are then ignored;
    optimiser and schedule start afresh"""
    temperature: float | None = None
    """the checkpoint's default action sampling temperature (0 = greedy; default: 0, or the --init policy's)"""

    def validate(self) -> None:
        check_masks(self.train_mask, "--train-mask")
        missing = [str(folder) for folder in self.data if not folder.is_dir()]
        if missing:
            raise ConfigError(f"--data: no such folder {missing[0]} (record demonstrations first: fm-agent record)")
        if self.init is not None and not (self.init / "fm_agent_policy.json").exists():
            raise ConfigError(f"--init {self.init} is not an fm-agent policy (no fm_agent_policy.json)")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be within (0, 1), got {self.val_fraction}")
        require_at_least(self, 1, "steps", "batch_size", "validate_every", "threads", "bins", "hidden", "layers")
        require_at_least(self, 1, "heads", "kv_heads", "history", "chunk", "history_stride", "image_size", "patch")
        require_at_least(self, 1, "max_episodes")
        require_at_least(self, 2, "fast_vocab")
        if self.action_encoding == "fast" and self.action_head == "parallel":
            raise ConfigError(
                "--action-encoding fast decodes a variable number of tokens: use --action-head autoregressive"
            )
        if self.action_encoding == "fast" and self.preset != "libero":
            raise ConfigError("--action-encoding fast is for continuous actions (the libero preset)")
        if not self.fast_scale > 0:
            raise ConfigError(f"--fast-scale must be positive, got {self.fast_scale}")
        if self.heads % self.kv_heads or self.hidden % self.heads:
            raise ConfigError(
                f"--hidden {self.hidden} / --heads {self.heads} / --kv-heads {self.kv_heads}: heads must "
                "divide hidden and kv-heads must divide heads"
            )


@dataclass(kw_only=True)
class ImportConfig:
    """Turn your own transformers VLM folder (save_pretrained of an image-text-to-text model, with its
    tokenizer) into a servable fm-agent policy: fm-agent's reserved tokens added to its tokenizer,
    embeddings resized, image-token id and tokens per image read off the model, action statistics from
    demonstrations or given. The result is validated (one dummy step) before the command succeeds.
    Format: docs/checkpoints.md."""

    vlm: Path
    """the transformers model folder (config.json, weights, tokenizer files)"""
    out: Path
    """the fm-agent checkpoint folder to write (replaced if it exists)"""
    preset: Literal["babyai", "libero"]
    """cameras, history, chunk and action kind of the environment family"""
    demos: Path | None = None
    """recorded demonstrations: action bin statistics (1st/99th percentiles) and proprio ranges"""
    action_low: tuple[float, ...] = ()
    """or the per-dimension action range itself (continuous presets without --demos)"""
    action_high: tuple[float, ...] = ()
    convention: Literal["fm_agent", "openvla"] = "fm_agent"
    """action tokens: fm-agent's own <aK> tokens added to the vocabulary, or OpenVLA's (bin k = the k-th id
    from the end of the original vocabulary)"""
    bins: int = 256
    history: int | None = None
    """frames per camera in the prompt (default: the preset's)"""
    chunk: int | None = None
    """actions per call (default: the preset's)"""

    def validate(self) -> None:
        if not (self.vlm / "config.json").exists():
            raise ConfigError(f"--vlm {self.vlm}: no config.json there (a folder written by save_pretrained)")
        if self.demos is not None and not self.demos.is_dir():
            raise ConfigError(f"--demos: no such folder {self.demos}")
        if len(self.action_low) != len(self.action_high):
            raise ConfigError("--action-low and --action-high need one value per action dimension each")
        if self.preset == "libero" and self.demos is None and not self.action_low:
            raise ConfigError("continuous actions need statistics: give --demos, or --action-low and --action-high")
        require_at_least(self, 2, "bins")
        require_at_least(self, 1, "history", "chunk")
