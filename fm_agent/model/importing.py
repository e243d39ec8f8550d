"""Turn a user's own transformers VLM folder into a servable fm-agent checkpoint.

The user's tokenizer is kept and extended (never replaced by a word-level one): fm-agent's
structural tokens (``<bos>``-style markers, ``<frame>``, ``<instruction>``, ``<proprio>``,
``<action>``, ``<query>``), the image placeholder if the model has none under that name, proprio
bin tokens, and, under fm-agent's action convention, one ``<aK>`` token per action bin. The
embedding table is resized to the new vocabulary and the model's image-token id set from the
tokenizer. Action statistics come from a demonstration folder or are given. Under OpenVLA's
convention no action tokens are added: bin k is the k-th id from the end of the original
vocabulary, as OpenVLA maps its 256 bins. The result is loaded back with full validation before
the function returns, so what it writes is known to serve.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import AutoModelForImageTextToText, AutoTokenizer, PreTrainedTokenizerFast

from .action_tokenizer import ActionTokenizer, quantile_range
from .checkpoint import MODEL_FILE, CheckpointError, features_per_image, vision_side
from .configuration_vla import BackboneShape, VLAConfig
from .modeling_vla import VLAPolicy
from .processor import token_id
from .text_tokenizer import (
    ACTION,
    BOS,
    EOS,
    FRAME,
    IMAGE,
    INSTRUCTION,
    PAD,
    PROPRIO,
    QUERY,
    action_token,
    proprio_token,
)


@dataclass
class ImportSpec:
    """What the VLM folder cannot say about the policy it should become."""

    env_family: str
    cameras: list[str]
    history: int = 2
    chunk: int = 1
    convention: str = "fm_agent"  # or "openvla"
    bins: int = 256
    discrete_actions: int = 0  # > 0: that many discrete actions (one token each), no statistics needed
    actions: np.ndarray | None = None  # (N, D) training actions for the bin statistics
    action_low: list[float] = field(default_factory=list)  # or the statistics themselves
    action_high: list[float] = field(default_factory=list)
    clip_low: list[float] = field(default_factory=list)  # the env's action bounds (default -1)
    clip_high: list[float] = field(default_factory=list)  # (default 1)
    proprio: np.ndarray | None = None  # (N, P) proprio samples: proprio bins in the prompt
    proprio_bins: int = 32


def action_tokenizer_for(spec: ImportSpec) -> ActionTokenizer:
    if spec.discrete_actions:
        return ActionTokenizer.discrete(spec.discrete_actions, chunk=spec.chunk)
    if spec.actions is not None:
        tokenizer = ActionTokenizer.fit(spec.actions, bins=spec.bins, chunk=spec.chunk)
    elif spec.action_low and len(spec.action_low) == len(spec.action_high):
        dims = len(spec.action_low)
        tokenizer = ActionTokenizer(
            "continuous", dims, spec.bins, chunk=spec.chunk, low=list(spec.action_low), high=list(spec.action_high)
        )
        tokenizer.clip_low, tokenizer.clip_high = [-1.0] * dims, [1.0] * dims
    else:
        raise ValueError(
            "continuous actions need statistics: a demonstration folder, or --action-low and --action-high"
        )
    if spec.clip_low:
        tokenizer.clip_low = list(spec.clip_low)
    if spec.clip_high:
        tokenizer.clip_high = list(spec.clip_high)
    tokenizer.convention = spec.convention
    return tokenizer


def _load_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
    except Exception as error:
        raise CheckpointError(
            folder, "tokenizer.json", "file", f"no fast tokenizer could be loaded ({error})"
        ) from error
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise CheckpointError(folder, "tokenizer.json", "file", "the tokenizer is not a fast (tokenizers) one")
    return tokenizer


def import_checkpoint(source: Path, out: Path, spec: ImportSpec) -> VLAConfig:
    """Write ``out``: ``source``'s model and tokenizer with fm-agent's tokens added, and its policy file."""
    source, out = Path(source), Path(out)
    if not (source / MODEL_FILE).exists():
        raise CheckpointError(source, MODEL_FILE, "file", "missing: not a transformers model folder")
    model = AutoModelForImageTextToText.from_pretrained(source, attn_implementation="sdpa")
    tokenizer = _load_tokenizer(source)
    actions = action_tokenizer_for(spec)
    if spec.convention == "openvla":
        if actions.bins > tokenizer.vocab_size:
            raise ValueError(f"{actions.bins} action bins do not fit a {tokenizer.vocab_size}-token vocabulary")
        actions.offset = tokenizer.vocab_size - 1  # bin k -> id vocab_size - 1 - k, before anything is added

    specials = [t for t in (PAD, BOS, EOS) if t not in tokenizer.get_vocab()]
    structure = [IMAGE, FRAME, INSTRUCTION, PROPRIO, ACTION, QUERY]
    if spec.proprio is not None:
        structure += [proprio_token(k) for k in range(spec.proprio_bins)]
    if spec.convention == "fm_agent":
        structure += [action_token(k) for k in range(actions.bins)]
    tokenizer.add_special_tokens(
        {"additional_special_tokens": specials + [t for t in structure if t not in tokenizer.get_vocab()]},
        replace_extra_special_tokens=False,
    )
    tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token = PAD, BOS, EOS
    if spec.convention == "fm_agent":
        actions.offset = token_id(tokenizer, action_token(0))
    model.resize_token_embeddings(len(tokenizer))
    image_id = token_id(tokenizer, IMAGE)
    for name in ("image_token_id", "image_token_index"):
        if hasattr(model.config, name):
            setattr(model.config, name, image_id)
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id

    image_size, patch = vision_side(model.config, "image_size"), vision_side(model.config, "patch_size")
    if image_size is None or patch is None:
        raise CheckpointError(source, MODEL_FILE, "vision_config", "names no image_size / patch_size")
    image_tokens = features_per_image(model, image_size)
    proprio_low, proprio_high = quantile_range(spec.proprio) if spec.proprio is not None else ([], [])
    config = VLAConfig(
        env_family=spec.env_family,
        cameras=list(spec.cameras),
        image_size=image_size,
        history=spec.history,
        action_tokenizer=actions.to_dict(),
        history_stride=spec.chunk,
        proprio_dim=0 if spec.proprio is None else int(spec.proprio.shape[1]),
        proprio_bins=spec.proprio_bins,
        proprio_low=proprio_low,
        proprio_high=proprio_high,
        backbone=BackboneShape(patch_size=patch),
        image_tokens=image_tokens,
        instruction_tokens="tokenizer",
        training={"imported_from": str(source)},
    )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    config.save(out)
    VLAPolicy.from_pretrained(out)  # raises CheckpointError if anything above left it unservable
    return config
