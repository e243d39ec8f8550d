"""Prefill and decode with a chosen mask, in the style of gpt-fast: few lines, shapes in comments.

``generate_with_mask`` wraps ``model.generate``; ``prefill`` / ``decode_one_token`` /
``decode_n_tokens`` are the same thing spelled out, so prefill and per-token decode can be
timed separately and the two paths checked against each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from fm_agent_client.masks import FutureMaskSpec

from .context import FutureAttention, use_future_attention
from .fast_decode import CachedDecodeStep

IMAGE_TOKEN_ATTRIBUTES = ("image_token_id", "image_token_index", "video_token_id")
# Inputs with one entry per token: a cache-free decode step must grow them with the sequence.
PER_TOKEN_INPUTS = ("mm_token_type_ids", "token_type_ids")
# What a generated token's entry is, where it is not 0 (text): PaliGemma's token types mark the
# bidirectional prefix with 0 and the causal suffix, generated tokens included, with 1.
GENERATED_TOKEN_TYPE = {("paligemma", "token_type_ids"): 1}


def visual_token_mask(config: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """True at the expanded image/video placeholder positions of ``input_ids`` ((B, L) -> (B, L) bool).

    LLaVA-family processors expand each image into as many placeholder ids as it has visual
    embeddings, so the placeholder positions are exactly the visual tokens the masks need.
    """
    ids = [getattr(config, name, None) for name in IMAGE_TOKEN_ATTRIBUTES]
    ids = [i for i in ids if isinstance(i, int)]
    if not ids:
        raise ValueError(f"{type(config).__name__} names no image token id; pass visual flags explicitly")
    return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))


def future_attention_for(model: PreTrainedModel, input_ids: torch.Tensor, spec: FutureMaskSpec) -> FutureAttention:
    """The per-request context for ``input_ids`` (the full prompt, placeholders expanded)."""
    return FutureAttention(spec, visual_token_mask(model.config, input_ids))


@torch.no_grad()
def generate_with_mask(
    model: PreTrainedModel,
    spec: FutureMaskSpec,
    input_ids: torch.Tensor,
    visual: torch.Tensor | None = None,
    **generate_kwargs: Any,
) -> Any:
    """``model.generate`` under ``spec``; ``full`` decode mode turns the cache off, as it must."""
    context = FutureAttention(spec, visual if visual is not None else visual_token_mask(model.config, input_ids))
    if spec.needs_full_recompute:
        per_token = [name for name in PER_TOKEN_INPUTS if name in generate_kwargs]
        if per_token:
            raise ValueError(
                f"generate() does not grow per-token inputs ({', '.join(per_token)}) without a cache, so "
                "decode_mode='full' cannot run through it for this model; use fm_agent.attention.decode_n_tokens instead"
            )
        generate_kwargs["use_cache"] = False
    with use_future_attention(context):
        return model.generate(input_ids=input_ids, **generate_kwargs)  # type: ignore[operator]


@torch.no_grad()
def prefill(
    model: PreTrainedModel, context: FutureAttention, input_ids: torch.Tensor, **model_inputs: Any
) -> tuple[torch.Tensor, DynamicCache | None]:
    """Run the prompt once. Returns last-position logits (B, V) and the cache (None in ``full`` mode)."""
    use_cache = not context.spec.needs_full_recompute
    cache = DynamicCache(config=model.config.get_text_config()) if use_cache else None
    out = model(
        input_ids=input_ids, past_key_values=cache, use_cache=use_cache, future_attention=context, **model_inputs
    )
    return out.logits[:, -1], cache


@torch.no_grad()
def decode_one_token(
    model: PreTrainedModel,
    context: FutureAttention,
    sequence: torch.Tensor,
    cache: DynamicCache | None,
    attention_mask: torch.Tensor | None = None,
    **model_inputs: Any,
) -> torch.Tensor:
    """Logits (B, V) for the token after ``sequence`` (B, L).

    With a cache only the last token is fed; in ``full`` mode the whole sequence is recomputed
    (pixel inputs included), which is what makes unmerged future-aware decoding expensive.
    """
    if cache is not None:
        out = model(
            input_ids=sequence[:, -1:],
            past_key_values=cache,
            use_cache=True,
            attention_mask=attention_mask,
            future_attention=context,
        )
    else:
        model_type = str(getattr(model.config, "model_type", ""))
        grown = {
            name: _grow(value, sequence.shape[1], GENERATED_TOKEN_TYPE.get((model_type, name), 0))
            if name in PER_TOKEN_INPUTS
            else value
            for name, value in model_inputs.items()
        }
        out = model(
            input_ids=sequence, use_cache=False, attention_mask=attention_mask, future_attention=context, **grown
        )
    return out.logits[:, -1]


def _grow(per_token: torch.Tensor, length: int, fill: int = 0) -> torch.Tensor:
    """Extend a (B, L) per-token input up to ``length`` with ``fill``, a generated token's entry."""
    return torch.nn.functional.pad(per_token, (0, length - per_token.shape[1]), value=fill)


@torch.no_grad()
def continue_decoding(
    model: PreTrainedModel,
    context: FutureAttention,
    logits: torch.Tensor,
    cache: DynamicCache | None,
    sequence: torch.Tensor,
    n_tokens: int,
    choose: Callable[[torch.Tensor], torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    fast: CachedDecodeStep | None = None,
    done: Callable[[], bool] | None = None,
    **model_inputs: Any,
) -> torch.Tensor:
    """The ``n_tokens`` tokens that follow a :func:`prefill` of ``sequence`` (B, L) -> (B, n_tokens).

    ``done``, asked after each chosen token, ends decoding early (variable-length outputs such as FAST
    action chunks, whose ``choose`` tracks when every row is complete); ``n_tokens`` is then the most.
    ``choose`` turns one step's logits (B, V) into the next ids (B, 1): greedy, sampled, or kept to
    a vocabulary range (a policy's action tokens). The last chosen token is not fed back, since
    nothing reads the logits after it. ``fast`` (a :class:`FastDecoder` or ``StaticCacheDecoder`` of ``model``)
    runs each cached step without the module stack, with the same tokens; it is ignored where there is no cache.
    """
    chosen = []
    for step in range(n_tokens):
        token = choose(logits)  # (B, 1)
        chosen.append(token)
        if step + 1 == n_tokens or (done is not None and done()):
            break
        sequence = torch.cat([sequence, token], dim=-1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], -1)
        if fast is not None and cache is not None:
            logits = fast.step(token, cache, attention_mask)
        else:
            logits = decode_one_token(model, context, sequence, cache, attention_mask, **model_inputs)
    return torch.cat(chosen, dim=-1)


@torch.no_grad()
def decode_n_tokens(
    model: PreTrainedModel,
    spec: FutureMaskSpec,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    visual: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    **model_inputs: Any,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding spelled out. Returns the new tokens (B, N) and each step's logits [(B, V)] * N."""
    context = FutureAttention(spec, visual if visual is not None else visual_token_mask(model.config, input_ids))
    logits, cache = prefill(model, context, input_ids, attention_mask=attention_mask, **model_inputs)
    steps: list[torch.Tensor] = []

    def greedy(step_logits: torch.Tensor) -> torch.Tensor:
        steps.append(step_logits)
        return step_logits.argmax(-1, keepdim=True)

    tokens = continue_decoding(
        model, context, logits, cache, input_ids, max_new_tokens, greedy, attention_mask, **model_inputs
    )
    return tokens, steps
