"""Future-aware attention inside real transformers VLMs (LLaVA and Qwen2-VL, tiny random weights)."""

from __future__ import annotations

import threading

import pytest
import torch
from decode_checks import next_step_logits_merged_and_causal
from reference import additive_mask
from tiny_models import llava_pixels, llava_prompt, qwen_inputs, tiny_llava, tiny_qwen2_vl

from fm_agent.attention import (
    ALL_SPEC_LABELS,
    FutureAttention,
    FutureMaskSpec,
    allowed_matrix,
    decode_n_tokens,
    enable_future_attention,
    future_attention_for,
    generate_with_mask,
    prefill,
    visual_token_mask,
)

UNMERGED = [label for label in ALL_SPEC_LABELS if label.endswith("/prefill")]
MERGED = [label for label in ALL_SPEC_LABELS if label.endswith("+merge")]
ATOL = 1e-5


def padded_llava_batch() -> dict[str, torch.Tensor]:
    """Two prompts of different lengths, left padded: 2 frames each, different text lengths."""
    long, short = llava_prompt(text_between=4)[0], llava_prompt(text_between=1)[0]
    pad = long.shape[0] - short.shape[0]
    input_ids = torch.stack([long, torch.cat([torch.zeros(pad, dtype=torch.long), short])])
    attention_mask = torch.stack([torch.ones_like(long), torch.cat([torch.zeros(pad), torch.ones_like(short)])])
    return {"input_ids": input_ids, "attention_mask": attention_mask.long(), "pixel_values": llava_pixels(4)}


@pytest.mark.parametrize("backend,stock", [("sdpa", "sdpa"), ("eager", "eager"), ("sdpa", "eager")])
def test_causal_equals_stock_llava(backend: str, stock: str) -> None:
    inputs = padded_llava_batch()
    reference = tiny_llava(attn=stock)
    model = enable_future_attention(tiny_llava(attn=stock), backend)
    assert model.config.vision_config._attn_implementation == stock, "the vision tower is untouched"
    context = future_attention_for(model, inputs["input_ids"], FutureMaskSpec("causal"))
    with torch.no_grad():
        expected = reference(**inputs).logits
        plain = model(**inputs).logits
        explicit = model(**inputs, future_attention=context).logits
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(plain[real], expected[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(explicit[real], expected[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_causal_equals_stock_qwen2_vl(backend: str) -> None:
    inputs = qwen_inputs()
    reference, model = tiny_qwen2_vl(attn=backend), enable_future_attention(tiny_qwen2_vl(attn=backend), backend)
    with torch.no_grad():
        expected = reference(**inputs).logits
        got = model(
            **inputs, future_attention=future_attention_for(model, inputs["input_ids"], FutureMaskSpec())
        ).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("label", UNMERGED)
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_unmerged_masks_equal_stock_eager_with_reference_mask(label: str, backend: str) -> None:
    """Our kernels vs transformers' own eager attention fed the brute-force pattern as a 4-D mask."""
    inputs = padded_llava_batch()
    spec = FutureMaskSpec.parse(label)
    model = enable_future_attention(tiny_llava(), backend)
    reference = tiny_llava(attn="eager")
    visual = visual_token_mask(model.config, inputs["input_ids"])
    pattern = allowed_matrix(visual, spec.mask, inputs["attention_mask"])
    with torch.no_grad():
        got = model(**inputs, future_attention=FutureAttention(spec, visual)).logits
        expected = reference(**{**inputs, "attention_mask": additive_mask(pattern)}).logits
        causal = reference(**inputs).logits
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=0)
    assert not torch.allclose(got[real], causal[real], atol=1e-3), "the mask must change the logits"


@pytest.mark.parametrize("label", MERGED)
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_merge_fused_kernel_equals_explicit_softmax(label: str, family: str) -> None:
    """The extra-channel SDPA path and the explicit softmax(B + C + M) path agree inside a model."""
    build, inputs = (tiny_llava, padded_llava_batch()) if family == "llava" else (tiny_qwen2_vl, qwen_inputs())
    sdpa, eager = enable_future_attention(build(), "sdpa"), enable_future_attention(build(), "eager")
    spec = FutureMaskSpec.parse(label)
    with torch.no_grad():
        a = sdpa(**inputs, future_attention=future_attention_for(sdpa, inputs["input_ids"], spec)).logits
        b = eager(**inputs, future_attention=future_attention_for(eager, inputs["input_ids"], spec)).logits
        plain = sdpa(**inputs).logits
    real = inputs.get("attention_mask", torch.ones(a.shape[:2])).bool()
    torch.testing.assert_close(a[real], b[real], atol=ATOL, rtol=0)
    assert not torch.allclose(a[real], plain[real], atol=1e-5), "merge must change the logits"


@pytest.mark.parametrize("label", MERGED)
def test_decode_after_merged_prefill_equals_causal_decode(label: str) -> None:
    model = enable_future_attention(tiny_llava())
    merged_step, causal_step = next_step_logits_merged_and_causal(
        model, llava_prompt(), llava_pixels(), FutureMaskSpec.parse(label)
    )
    assert torch.equal(merged_step, causal_step)


@pytest.mark.parametrize("label", [l for l in ALL_SPEC_LABELS if l.endswith("/full")])
def test_full_mode_logits_equal_cache_free_reference(label: str) -> None:
    """Each generated token's logits equal a cache-free stock-eager forward over the whole sequence with
    the mask extended to the generated (text) tokens."""
    spec = FutureMaskSpec.parse(label)
    model, reference = enable_future_attention(tiny_llava()), tiny_llava(attn="eager")
    ids, pixels = llava_prompt(), llava_pixels()
    out = generate_with_mask(
        model,
        spec,
        ids,
        pixel_values=pixels,
        max_new_tokens=4,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    prompt_visual = visual_token_mask(model.config, ids)
    for step, logits in enumerate(out.logits):
        sequence = out.sequences[:, : ids.shape[1] + step]
        visual = torch.nn.functional.pad(prompt_visual, (0, step), value=False)
        pattern = allowed_matrix(visual, FutureMaskSpec(spec.mask, decode_mode="full"))
        with torch.no_grad():
            expected = reference(
                input_ids=sequence, pixel_values=pixels, attention_mask=additive_mask(pattern), use_cache=False
            ).logits[:, -1]
        torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_full_mode_refuses_a_stale_cache() -> None:
    model = enable_future_attention(tiny_llava())
    ids, pixels = llava_prompt(), llava_pixels()
    context = future_attention_for(model, ids, FutureMaskSpec("Mf", decode_mode="prefill"))
    _, cache = prefill(model, context, ids, pixel_values=pixels)
    full = future_attention_for(model, ids, FutureMaskSpec("Mf", decode_mode="full"))
    with pytest.raises(RuntimeError, match="use_cache=False"), torch.no_grad():
        model(input_ids=ids[:, -1:], past_key_values=cache, future_attention=full)


@pytest.mark.parametrize("label", ALL_SPEC_LABELS)
def test_generate_equals_manual_prefill_decode_loop_llava(label: str) -> None:
    model = enable_future_attention(tiny_llava())
    ids, pixels = llava_prompt(frames=3), llava_pixels(3)
    spec = FutureMaskSpec.parse(label)
    out = generate_with_mask(
        model,
        spec,
        ids,
        pixel_values=pixels,
        max_new_tokens=6,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens, steps = decode_n_tokens(model, spec, ids, 6, pixel_values=pixels)
    assert torch.equal(out.sequences[:, ids.shape[1] :], tokens)
    for a, b in zip(out.logits, steps):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("label", ["causal", "Mf/prefill", "Mv2t+merge", "Mv2v/prefill"])
def test_generate_equals_manual_loop_qwen2_vl(label: str) -> None:
    model = enable_future_attention(tiny_qwen2_vl())
    inputs = qwen_inputs()
    ids = inputs.pop("input_ids")
    spec = FutureMaskSpec.parse(label)
    generated = generate_with_mask(model, spec, ids, max_new_tokens=5, do_sample=False, **inputs)
    tokens, _ = decode_n_tokens(model, spec, ids, 5, **inputs)
    assert torch.equal(generated[:, ids.shape[1] :], tokens)


def test_masks_are_per_request_and_thread_safe() -> None:
    """Concurrent requests with different masks on one model give exactly their sequential results."""
    model = enable_future_attention(tiny_llava())
    ids, pixels = llava_prompt(), llava_pixels()
    labels = ["causal", "Mf/prefill", "Mv2v+merge", "Mv2t/prefill"] * 3

    def run(label: str) -> torch.Tensor:
        out = generate_with_mask(
            model,
            FutureMaskSpec.parse(label),
            ids,
            pixel_values=pixels,
            max_new_tokens=5,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        return torch.stack(out.logits)

    expected = {label: run(label) for label in set(labels)}
    results: dict[int, torch.Tensor] = {}

    def worker(index: int, label: str) -> None:
        results[index] = run(label)

    threads = [threading.Thread(target=worker, args=(i, l)) for i, l in enumerate(labels)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, label in enumerate(labels):
        assert torch.equal(results[i], expected[label]), label
    assert not torch.allclose(expected["causal"], expected["Mf/prefill"]), "masks must lead to different outputs"
