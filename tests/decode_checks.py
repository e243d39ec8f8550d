"""One check several test files make: decoding after a merged prefill is the causal decode."""

from __future__ import annotations

import copy

import torch

from fm_agent.attention import FutureMaskSpec, future_attention_for, prefill


def next_step_logits_merged_and_causal(
    model, ids: torch.Tensor, pixels: torch.Tensor, spec: FutureMaskSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill ``ids`` under ``spec``, then take the greedy token's decode step twice from that cache: with
    the request's context still active, and plainly (causal) from a copy. Merge must leave them equal."""
    context = future_attention_for(model, ids, spec)
    logits, cache = prefill(model, context, ids, pixel_values=pixels)
    next_ids = logits.argmax(-1, keepdim=True)
    causal_cache = copy.deepcopy(cache)
    with torch.no_grad():
        merged_step = model(input_ids=next_ids, past_key_values=cache, future_attention=context).logits
        causal_step = model(input_ids=next_ids, past_key_values=causal_cache).logits
    return merged_step, causal_step
