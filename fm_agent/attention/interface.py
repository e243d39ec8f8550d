"""The attention functions transformers calls, registered under their own implementation names.

``fm_sdpa`` wraps the stock SDPA path and ``fm_eager`` is an explicit-softmax twin that also
returns attention probabilities (for inspection and tests). Without an active
:class:`~fm_agent.attention.context.FutureAttention`, or in a vision tower, both behave exactly
like the stock implementations. Which modules belong to the decoder is marked when the model is
enabled, not read off ``is_causal``: PaliGemma's decoder declares itself bidirectional.

Merge keeps the fused causal kernel: C is non-zero only on the first ``slots`` key columns, so
it is folded into ``slots`` extra query/key channels. Query channel ``s`` of visual row ``i``
carries ``C[i, s] / scale`` and key channel ``s`` is one-hot on sink key ``s``, hence
``scale * q'.k'_j = B[i, j] + C[i, s] [j == sink_s]``. Under a sliding window each row's sink is
the start of its own window, which one key channel cannot express: there C is added to a
materialised float mask instead.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from .context import AttentionPlan, FutureAttention, active_future_attention
from .merge import max_future_scores, merge_future_scores

SDPA_IMPLEMENTATION = "fm_sdpa"
EAGER_IMPLEMENTATION = "fm_eager"
CONTEXT_KWARG = "future_attention"
# Set on every attention module of the language model by enable_future_attention.
DECODER_MARK = "fm_agent_decoder"


def _is_decoder(module: nn.Module) -> bool:
    """Marked modules are the decoder's; unmarked ones (never enabled) fall back to ``is_causal``."""
    marked = getattr(module, DECODER_MARK, None)
    return bool(marked) if marked is not None else bool(getattr(module, "is_causal", True))


def _context(module: nn.Module, kwargs: dict) -> FutureAttention | None:
    context = kwargs.pop(CONTEXT_KWARG, None) or active_future_attention()
    if context is None or context.spec.is_causal or not _is_decoder(module):
        return None  # vision towers and plain causal requests take the stock path
    return context


def _plan(
    module: nn.Module,
    context: FutureAttention | None,
    attention_mask,
    query: torch.Tensor,
    key: torch.Tensor,
    kwargs: dict,
) -> AttentionPlan | None:
    if context is None:
        return None
    window = kwargs.get("sliding_window")
    causal = bool(getattr(module, "is_causal", True))
    return context.plan(attention_mask, query.shape[0], query.shape[2], key.shape[2], query.device, window, causal)


def sink_columns(bias: torch.Tensor, plan: AttentionPlan, kv_len: int) -> torch.Tensor:
    """C on the key axis: (B, H, R, slots) pooled scores -> (B, H, R, K), each on its row's sink key."""
    assert plan.sink_index is not None  # built with the merge layout
    valid = plan.sink_index >= 0
    one_hot = torch.nn.functional.one_hot(plan.sink_index.clamp(min=0), kv_len).to(bias.dtype)  # (B, R, slots, K)
    one_hot = one_hot * valid[..., None]
    return torch.einsum("bhrs,brsk->bhrk", bias, one_hot)


def merged_float_mask(query: torch.Tensor, key: torch.Tensor, plan: AttentionPlan, scaling: float) -> torch.Tensor:
    """(B, H, Q, K) additive mask: the model's own pattern plus C on each visual row's sink key."""
    assert plan.allowed is not None and plan.merge is not None
    dtype = query.dtype
    mask = torch.zeros(plan.allowed.shape, dtype=torch.float32, device=query.device)
    mask = mask.masked_fill(~plan.allowed, torch.finfo(dtype).min).expand(-1, query.shape[1], -1, -1).contiguous()
    columns = sink_columns(pooled_sink_bias(query, key, plan, scaling), plan, key.shape[2])
    rows = plan.merge.rows[:, None, :, None].expand(-1, query.shape[1], -1, key.shape[2])
    return mask.scatter_add(2, rows, columns).to(dtype)


def pooled_sink_bias(query: torch.Tensor, key: torch.Tensor, plan: AttentionPlan, scaling: float) -> torch.Tensor:
    """C's non-zero values for the visual rows: (B, H, R, slots) fp32.

    query: (B, H, Q, D); key: (B, Hkv, K, D). Only the R visual rows are scored against the keys,
    in fp32 as the paper specifies (the default max path lets the GEMM produce fp32 from half inputs).
    """
    layout = plan.merge
    assert layout is not None  # only merged plans carry a sink bias
    batch, heads, q_len, dim = query.shape
    kv_heads, rows = key.shape[1], layout.rows.shape[1]
    index = layout.rows[:, None, :, None].expand(-1, heads, -1, dim)
    visual_queries = torch.gather(query, 2, index)  # (B, H, R, D)
    if layout.additive is not None:
        keys = repeat_kv(key, heads // kv_heads)
        return max_future_scores(visual_queries, keys, layout, scaling, key.shape[2] - q_len)
    visual_queries = visual_queries.float()
    grouped = visual_queries.view(batch, kv_heads, heads // kv_heads, rows, dim)
    scores = torch.matmul(grouped, key.float()[:, :, None].transpose(-1, -2)) * scaling  # (B, Hkv, G, R, K)
    return merge_future_scores(scores.view(batch, heads, rows, -1), layout)


def channel_alignment(device: torch.device) -> int:
    """Head width the merge channels are padded to a multiple of. CUDA's flash and memory-efficient
    SDPA kernels take widths that are multiples of 8 only; at 128 + 1 channels SDPA falls back to its
    math kernel, which materialises every score (at 4096 tokens a 7B model's merged prefill took 2.7x
    the causal one that way). The CPU's fused kernel takes any width, so there nothing is added."""
    return 8 if device.type == "cuda" else 1


def fold_sink_bias(
    query: torch.Tensor, key: torch.Tensor, plan: AttentionPlan, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append the merge channels: returns (B, H, Q, D + C) queries and (B, Hkv, K, D + C) keys, C the
    slots plus zero channels up to :func:`channel_alignment` (a zero channel adds exactly 0 to q.k)."""
    assert plan.merge is not None and plan.sink_keys is not None
    bias = pooled_sink_bias(query, key, plan, scaling) / scaling  # (B, H, R, slots)
    slots = bias.shape[-1]
    pad = -(query.shape[-1] + slots) % channel_alignment(query.device)
    extra = query.new_zeros(*query.shape[:3], slots + pad)
    index = plan.merge.rows[:, None, :, None].expand(-1, query.shape[1], -1, slots)
    extra[..., :slots].scatter_add_(2, index, bias.to(query.dtype))  # padded rows add 0 to row 0
    sink = torch.nn.functional.pad(plan.sink_keys.to(key.dtype), (0, pad)).expand(-1, key.shape[1], -1, -1)
    return torch.cat([query, extra], dim=-1), torch.cat([key, sink], dim=-1)


def future_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA with a future-aware mask (materialised) or merge (fused causal kernel, extra channels)."""
    context = _context(module, kwargs)
    plan = _plan(module, context, attention_mask, query, key, kwargs)
    if plan is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if plan.merge is None:
        return sdpa_attention_forward(
            module, query, key, value, plan.allowed, dropout=dropout, scaling=scaling, **kwargs
        )
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    if plan.sink_keys is None:  # per-row sinks (sliding window): C goes into a materialised mask
        mask = merged_float_mask(query, key, plan, scaling)
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    head_dim = value.shape[-1]
    query, key = fold_sink_bias(query, key, plan, scaling)
    # SDPA's fused CPU/GPU kernels need equal q/k/v widths; zero value channels cost almost nothing.
    value = torch.nn.functional.pad(value, (0, query.shape[-1] - head_dim))
    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    return output[..., :head_dim], None


def future_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit ``softmax(B + C + M)``; returns the probabilities too, so they can be inspected."""
    context = _context(module, kwargs)
    plan = _plan(module, context, attention_mask, query, key, kwargs)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    logits = torch.matmul(query, repeat_kv(key, groups).transpose(2, 3)) * scaling  # (B, H, Q, K)
    mask = attention_mask
    if plan is not None and plan.merge is None:
        mask = plan.allowed
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=logits.dtype, device=logits.device).masked_fill(
                ~mask, torch.finfo(logits.dtype).min
            )
        logits = logits + mask[:, :, :, : key.shape[-2]]
    if plan is not None and plan.merge is not None:
        bias = pooled_sink_bias(query, key, plan, scaling)  # (B, H, R, slots)
        rows = plan.merge.rows[:, None, :, None].expand(-1, query.shape[1], -1, key.shape[2])
        columns = sink_columns(bias, plan, key.shape[2])  # (B, H, R, K): bias on each row's sink columns
        logits = logits.float().scatter_add(2, rows, columns).to(logits.dtype)
    weights = nn.functional.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, repeat_kv(value, groups)).transpose(1, 2).contiguous()
    return output, weights


def register_future_attention() -> None:
    """Make ``fm_sdpa`` / ``fm_eager`` known to transformers (idempotent).

    Registering the matching mask builders matters: an implementation without one gets no mask at
    all from transformers, which silently drops padding.
    """
    AttentionInterface.register(SDPA_IMPLEMENTATION, future_sdpa_attention)
    AttentionInterface.register(EAGER_IMPLEMENTATION, future_eager_attention)
    AttentionMaskInterface.register(SDPA_IMPLEMENTATION, sdpa_mask)
    AttentionMaskInterface.register(EAGER_IMPLEMENTATION, eager_mask)


def enable_future_attention(model: PreTrainedModel, backend: str = "sdpa") -> PreTrainedModel:
    """Switch the language model of ``model`` to future-aware attention; the vision tower is untouched.

    The switch itself changes nothing numerically: until a request activates a
    :class:`FutureAttention`, every forward is the stock one.
    """
    register_future_attention()
    name = {"sdpa": SDPA_IMPLEMENTATION, "eager": EAGER_IMPLEMENTATION}.get(backend)
    if name is None:
        raise ValueError(f"backend must be 'sdpa' or 'eager', got {backend!r}")
    sub_configs = getattr(model.config, "sub_configs", {}) or {}
    model.set_attn_implementation({"text_config": name} if "text_config" in sub_configs else name)
    mark_decoder_attention(model)
    return model


def mark_decoder_attention(model: PreTrainedModel) -> int:
    """Mark the language model's attention modules as the ones masks apply to; returns how many.

    They are the modules built from a config of the text config's class (a vision tower has its own;
    models may deep-copy their sub-configs, so identity would miss them). Marking beats
    ``is_causal``: PaliGemma's decoder sets ``use_bidirectional_attention`` for compatibility, so its
    attention modules say ``is_causal=False`` although they are a decoder's, and would be skipped.
    """
    text_config = model.config.get_text_config(decoder=True)
    marked = 0
    for module in model.modules():
        if hasattr(module, "is_causal") and (hasattr(module, "q_proj") or hasattr(module, "qkv_proj")):
            is_text = type(getattr(module, "config", None)) is type(text_config)
            setattr(module, DECODER_MARK, is_text)
            marked += is_text
    if not marked:
        raise ValueError(
            f"{type(model).__name__}: no attention module uses the text config, so the decoder cannot be told "
            "from the vision tower; future-aware masks would silently do nothing"
        )
    return marked
