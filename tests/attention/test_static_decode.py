"""Decoding on a fixed-capacity cache (and its CUDA graph) gives the reference path's tokens."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from decode_checks import assert_same_chunks, observations, prefilled
from tiny_models import llava_pixels, llava_prompt, tiny_llava
from transformers import LlamaForCausalLM

from fm_agent.attention import ALL_SPEC_LABELS, FutureMaskSpec, decode_n_tokens, enable_future_attention
from fm_agent.attention.generation import continue_decoding, decode_one_token, future_attention_for, prefill
from fm_agent.attention.static_decode import StaticCacheDecoder
from fm_agent.model import VLAPolicy
from fm_agent.profiling.latency import DecoderShape

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def policies(tiny_policy) -> tuple[VLAPolicy, VLAPolicy]:
    """A policy decoding on a static cache (eagerly: no GPU here) and one on the reference path."""
    torch.set_num_threads(1)
    static, reference = (
        VLAPolicy.from_pretrained(tiny_policy),
        VLAPolicy.from_pretrained(tiny_policy, fast_decode=False),
    )
    # Room for 2 generated tokens, in steps of 8: each 14-token chunk moves to larger buffers on the way.
    static.fast_decoder = StaticCacheDecoder(static.model, capacity_step=8, reserve=2)  # type: ignore[assignment]
    return static, reference


def test_a_static_step_matches_the_reference_step_and_leaves_the_cache_alone(policies) -> None:
    static, _ = policies
    for label in ("causal", "Mf/prefill", "Mv2t+merge"):
        context, input_ids, token, cache, mask = prefilled(static, label)
        twin = copy.deepcopy(cache)
        expected = decode_one_token(static.model, context, torch.cat([input_ids, token], -1), cache, mask)
        length = twin.get_seq_length()
        got = static.fast_decoder.step(token, twin, mask)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert got.argmax(-1).tolist() == expected.argmax(-1).tolist(), label
        assert twin.get_seq_length() == length  # decoding state lives in the decoder's buffers


@pytest.mark.parametrize("label", ALL_SPEC_LABELS)
def test_every_mask_decodes_the_same_tokens_greedy_and_sampled(policies, label) -> None:
    """A padded batch of three prompts, one action chunk each (the decoder moves to larger buffers on
    the way)."""
    static, reference = policies
    spec = FutureMaskSpec.parse(label)
    assert_same_chunks(static, reference, spec)
    if not spec.needs_full_recompute:
        assert len(static.fast_decoder._slots) > 1  # it did outgrow its first buffers


def test_buffers_are_reused_across_requests_without_leaking_state(policies) -> None:
    """A second request of the same shape decodes in the first one's buffers; stale keys beyond its
    prompt stay masked, so its tokens are the same as from a fresh decoder."""
    static, _ = policies
    request = observations(static)[:2]
    first = [r.tokens for r in static.predict(request)]
    static.predict(observations(static)[1:])  # other prompts through the same slots
    again = [r.tokens for r in static.predict(request)]
    fresh = StaticCacheDecoder(static.model, capacity_step=8, reserve=2)
    decoder, static.fast_decoder = static.fast_decoder, fresh  # type: ignore[assignment]
    try:
        new = [r.tokens for r in static.predict(request)]
    finally:
        static.fast_decoder = decoder
    for a, b, c in zip(first, again, new, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def tiny_llama(device: str = "cpu") -> LlamaForCausalLM:
    """A Llama causal LM with grouped-query attention, built as the latency profile builds its decoder."""
    shape = DecoderShape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=97)
    return shape.build(torch.float32, device)


def static_greedy(model, input_ids: torch.Tensor, tokens: int, decoder: StaticCacheDecoder) -> torch.Tensor:
    """Greedy tokens after a causal prefill, every step on ``decoder``."""
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=True)
    logits, cache = out.logits[:, -1], out.past_key_values
    chosen = []
    for _ in range(tokens):
        token = logits.argmax(-1, keepdim=True)
        chosen.append(token)
        logits = decoder.step(token, cache, None)
    return torch.cat(chosen, -1)


def test_a_plain_causal_lm_decodes_the_reference_tokens() -> None:
    model = tiny_llama()
    ids = torch.randint(3, 97, (2, 11), generator=torch.Generator().manual_seed(3))
    want, _ = decode_n_tokens(model, FutureMaskSpec.parse("causal"), ids, 12, visual=torch.zeros_like(ids, dtype=bool))
    got = static_greedy(model, ids, 12, StaticCacheDecoder(model, capacity_step=4, reserve=1))
    assert torch.equal(got, want)


def test_graphs_need_cuda_and_unsupported_models_are_refused() -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
            StaticCacheDecoder(tiny_llama(), graph=True)
    assert not StaticCacheDecoder(tiny_llama()).graph or torch.cuda.is_available()
    with pytest.raises(ValueError, match="no Llama text model"):
        StaticCacheDecoder(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


@CUDA
def test_cuda_graph_replays_decode_the_reference_tokens() -> None:
    """On the GPU, fp32: steps replayed from a captured graph give the eager reference path's greedy
    tokens, on a plain Llama (GQA) and on a LLaVA model after a causal and a merged prefill, including
    a move to a larger buffer (capacity_step 4) and a second request reusing the captured graphs."""
    model = tiny_llama("cuda")
    decoder = StaticCacheDecoder(model, capacity_step=4, reserve=1)
    assert decoder.graph
    ids = torch.randint(3, 97, (2, 11), generator=torch.Generator().manual_seed(3)).cuda()
    want, _ = decode_n_tokens(model, FutureMaskSpec.parse("causal"), ids, 12, visual=torch.zeros_like(ids, dtype=bool))
    for _ in range(2):
        assert torch.equal(static_greedy(model, ids, 12, decoder), want)
    llava = enable_future_attention(tiny_llava()).cuda()
    prompt, pixels = llava_prompt().cuda(), llava_pixels().cuda()
    for label in ("causal", "Mf+merge"):
        spec = FutureMaskSpec.parse(label)
        reference, _ = decode_n_tokens(llava, spec, prompt, 8, pixel_values=pixels)
        context = future_attention_for(llava, prompt, spec)
        logits, cache = prefill(llava, context, prompt, pixel_values=pixels)
        graphed = continue_decoding(llava, context, logits, cache, prompt, 8, lambda x: x.argmax(-1, keepdim=True),
                                    fast=StaticCacheDecoder(llava))  # fmt: skip
        assert torch.equal(graphed, reference), label


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_graph_replays_equal_the_same_step_run_eagerly(dtype: torch.dtype) -> None:
    """In half precision the reference path (no mask, flash kernel) and the static one (a boolean mask)
    may round differently, so here the graph is checked against the very step it recorded, run eagerly
    on buffers of the same capacity."""
    model = tiny_llama("cuda").to(dtype)
    ids = torch.randint(3, 97, (2, 11), generator=torch.Generator().manual_seed(3)).cuda()
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    graphed, eager = (StaticCacheDecoder(model, graph=g, capacity_step=4, reserve=1) for g in (True, False))
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(10):
        got, want = graphed.step(token, out.past_key_values, None), eager.step(token, out.past_key_values, None)
        torch.testing.assert_close(got, want)
        token = want.argmax(-1, keepdim=True)
