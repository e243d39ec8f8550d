"""Future-aware attention for transformers VLMs ("Rethinking Causal Mask Attention for
Vision-Language Inference", ICLR 2026): masks ``causal | Mf | Mv2v | Mv2t``, each with or without
merge, in ``prefill`` or ``full`` decode mode.

Typical use::

    from fm_agent.attention import FutureMaskSpec, MergeOptions, enable_future_attention, generate_with_mask

    enable_future_attention(model)                       # once, after loading
    spec = FutureMaskSpec("Mf", merge=MergeOptions())    # per request
    out = generate_with_mask(model, spec, input_ids, pixel_values=pixels, max_new_tokens=8)
"""

from fm_agent_client.masks import ALL_SPEC_LABELS, CAUSAL, MASK_KINDS, FutureMaskSpec, MergeOptions

from .context import AttentionPlan, FutureAttention, active_future_attention, use_future_attention
from .generation import (
    decode_n_tokens,
    decode_one_token,
    future_attention_for,
    generate_with_mask,
    prefill,
    visual_token_mask,
)
from .interface import (
    CONTEXT_KWARG,
    EAGER_IMPLEMENTATION,
    SDPA_IMPLEMENTATION,
    enable_future_attention,
    register_future_attention,
)
from .masks import admitted_future_keys, allowed_matrix, future_extension, render_allowed
from .merge import MergeLayout, merge_future_scores

register_future_attention()

__all__ = [
    "ALL_SPEC_LABELS",
    "CAUSAL",
    "CONTEXT_KWARG",
    "EAGER_IMPLEMENTATION",
    "MASK_KINDS",
    "SDPA_IMPLEMENTATION",
    "AttentionPlan",
    "FutureAttention",
    "FutureMaskSpec",
    "MergeLayout",
    "MergeOptions",
    "active_future_attention",
    "admitted_future_keys",
    "allowed_matrix",
    "decode_n_tokens",
    "decode_one_token",
    "enable_future_attention",
    "future_attention_for",
    "future_extension",
    "generate_with_mask",
    "merge_future_scores",
    "prefill",
    "register_future_attention",
    "render_allowed",
    "use_future_attention",
    "visual_token_mask",
]
