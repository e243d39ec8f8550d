"""The fast decode step gives the reference path's logits bit for bit, so every token is the same."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

from fm_agent.attention import ALL_SPEC_LABELS, FutureAttention, FutureMaskSpec
from fm_agent.attention.fast_decode import FastDecoder
from fm_agent.attention.generation import decode_one_token, prefill
from fm_agent.model import Observation, VLAPolicy, step_generator


@pytest.fixture(scope="module")
def policies(tiny_policy) -> tuple[VLAPolicy, VLAPolicy]:
    torch.set_num_threads(1)
    fast, reference = VLAPolicy.from_pretrained(tiny_policy), VLAPolicy.from_pretrained(tiny_policy, fast_decode=False)
    assert fast.fast_decoder is not None and reference.fast_decoder is None
    return fast, reference


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
