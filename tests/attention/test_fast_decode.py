"""The fast decode step gives the reference path's logits bit for bit, so every token is the same."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from decode_checks import assert_same_chunks, observations, prefilled

from fm_agent.attention import ALL_SPEC_LABELS, FutureMaskSpec
from fm_agent.attention.fast_decode import FastDecoder
from fm_agent.attention.generation import decode_one_token
from fm_agent.model import VLAPolicy


@pytest.fixture(scope="module")
def policies(tiny_policy) -> tuple[VLAPolicy, VLAPolicy]:
    torch.set_num_threads(1)
    fast, reference = VLAPolicy.from_pretrained(tiny_policy), VLAPolicy.from_pretrained(tiny_policy, fast_decode=False)
    assert fast.fast_decoder is not None and reference.fast_decoder is None
    return fast, reference


def test_a_fast_step_returns_the_reference_steps_logits_exactly(policies) -> None:
    fast, _ = policies
    for label in ("causal", "Mf/prefill", "Mv2t+merge"):
        context, input_ids, token, cache, mask = prefilled(fast, label)
        sequence = torch.cat([input_ids, token], dim=-1)
        twin = copy.deepcopy(cache)
        expected = decode_one_token(fast.model, context, sequence, cache, mask)
        assert fast.fast_decoder is not None
        got = fast.fast_decoder.step(token, twin, mask)
        assert torch.equal(got, expected), label
        assert twin.get_seq_length() == cache.get_seq_length()  # both caches grew by the token
        for layer, twin_layer in zip(cache.layers, twin.layers):
            assert torch.equal(layer.keys, twin_layer.keys) and torch.equal(layer.values, twin_layer.values)


@pytest.mark.parametrize("label", ALL_SPEC_LABELS)
def test_every_mask_decodes_the_same_tokens_greedy_and_sampled(policies, label) -> None:
    fast, reference = policies
    assert_same_chunks(fast, reference, FutureMaskSpec.parse(label))


def test_only_supported_backbones_get_the_fast_step(policies) -> None:
    fast, _ = policies
    assert FastDecoder.supports(fast.model)
    fast.model.train()
    try:
        assert not FastDecoder.supports(fast.model)  # dropout would differ: training keeps the reference
    finally:
        fast.model.eval()
    assert not FastDecoder.supports(torch.nn.Linear(2, 2))


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile needs g++")
def test_the_compiled_step_decodes_the_reference_tokens(tiny_policy, policies) -> None:
    """The compiled step is not bit-exact (inductor reorders arithmetic), so this asserts what it
    promises: logits within 1e-4 of the exact step's and the same greedy and sampled tokens, on a
    left-padded batch under a causal and a merged mask. Loading warmed every batch class, so nothing
    here (batches of 1, 2 and 3, padded or not) compiles again."""
    compiled = VLAPolicy.from_pretrained(tiny_policy, compile_decode=True)
    assert compiled.fast_decoder is not None and compiled.fast_decoder.compiled
    fast, reference = policies
    with torch._dynamo.config.patch(error_on_recompile=True):
        request = observations(compiled)
        for batch in ([request[0]], [request[0], request[0]], request[:2], [request[1]] * 3):
            compiled.predict(batch)
        _, _, token, cache, mask = prefilled(fast, "causal")
        twin = copy.deepcopy(cache)
        assert fast.fast_decoder is not None
        expected = fast.fast_decoder.step(token, cache, mask)
        got = compiled.fast_decoder.step(token, twin, mask)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
        assert twin.get_seq_length() == cache.get_seq_length()
        for label in ("causal", "Mv2t+merge"):
            assert_same_chunks(compiled, reference, FutureMaskSpec.parse(label))
