"""Checks several test files make: decoding after a merged prefill is the causal decode, and a faster decode
path gives the reference path's chunks for a padded batch of observations."""

from __future__ import annotations

import copy

import numpy as np
import torch

from fm_agent.attention import FutureAttention, FutureMaskSpec, future_attention_for, prefill
from fm_agent.model import Observation, VLAPolicy, step_generator


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


def observations(policy: VLAPolicy, temperature: float = 0.0) -> list[Observation]:
    """Three requests of different prompt lengths (a left-padded batch), each with its own frames."""
    rng = np.random.default_rng(7)
    instructions = ["pick up the black bowl", "pick up the black bowl and place it on the plate", "place it"]
    batch = []
    for i, instruction in enumerate(instructions):
        frames = [{c: rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for c in policy.config.cameras}
                  for _ in range(2)]  # fmt: skip
        generator = step_generator(11 + i, 3) if temperature else None
        batch.append(Observation(frames, instruction, rng.uniform(-1, 1, 8), temperature, generator))
    return batch


def assert_same_chunks(policy: VLAPolicy, reference: VLAPolicy, spec: FutureMaskSpec) -> None:
    """``policy`` predicts ``reference``'s tokens and actions for :func:`observations`, greedy and sampled."""
    for temperature in (0.0, 1.5):
        got = policy.predict(observations(policy, temperature), spec)
        want = reference.predict(observations(reference, temperature), spec)
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a.tokens, b.tokens), (spec.label, temperature)
            assert np.array_equal(a.actions, b.actions)


def prefilled(
    policy: VLAPolicy, label: str
) -> tuple[FutureAttention, torch.Tensor, torch.Tensor, object, torch.Tensor]:
    """The padded batch of :func:`observations` prefilled under ``label``: its context, the prompt ids,
    the first greedy token, the cache, and the attention mask with that token appended."""
    inputs = policy.encode(observations(policy))
    context = FutureAttention(FutureMaskSpec.parse(label), inputs["input_ids"] == policy.image_token_id)
    logits, cache = prefill(policy.model, context, inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            pixel_values=inputs["pixel_values"])  # fmt: skip
    token = logits.argmax(-1, keepdim=True)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(token)], dim=-1)
    return context, inputs["input_ids"], token, cache, mask
