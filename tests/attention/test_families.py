"""Every mask on the VLM families VLAs are built on, against the whole-model loop reference.

The reference (``tests/reference.py``) ORs the paper's future keys into whatever mask the model
builds for each layer itself: padding, sliding windows (Mistral, Qwen2, Gemma3's local layers),
Gemma3's bidirectional image blocks, PaliGemma's bidirectional prefix. Each family is a tiny
random config of transformers' own classes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from reference import REFERENCE_IMPLEMENTATION, ReferenceRequest, reference_request, register_reference_attention
from tiny_models import (
    gemma3_inputs,
    idefics3_inputs,
    internvl_inputs,
    llava_next_inputs,
    llava_pixels,
    llava_prompt,
    mistral3_inputs,
    paligemma_inputs,
    qwen_inputs,
    tiny_gemma3,
    tiny_idefics3,
    tiny_internvl,
    tiny_llava,
    tiny_llava_next,
    tiny_llava_onevision,
    tiny_mistral3,
    tiny_paligemma,
    tiny_qwen2_5_vl,
    tiny_qwen2_vl,
)
from transformers import PreTrainedModel

from fm_agent.attention import (
    ALL_SPEC_LABELS,
    FutureAttention,
    FutureMaskSpec,
    decode_n_tokens,
    enable_future_attention,
    prefill,
    visual_token_mask,
)
from fm_agent.attention.interface import DECODER_MARK

ATOL = 1e-5
PREFILL_LABELS = [label for label in ALL_SPEC_LABELS if not label.endswith("/full")] + [
    "Mf+merge(op=mean,k=2,slots=2)",
    "Mv2t+merge(op=max,k=1,slots=3)",
]


def padded(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad (L,) prompts into (B, L) ids and the 2-D attention mask."""
    length = max(p.shape[0] for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(length - p.shape[0], dtype=torch.long), p]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(length - p.shape[0]), torch.ones(p.shape[0])]) for p in prompts])
    return ids, mask.long()


def llava_batch() -> dict[str, torch.Tensor]:
    ids, mask = padded([llava_prompt(text_between=4)[0], llava_prompt(text_between=1)[0]])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": llava_pixels(4)}


@dataclass(frozen=True)
class Family:
    build: Callable[[str], PreTrainedModel]
    inputs: Callable[[], dict[str, torch.Tensor]]
    per_token: str | None = None  # an input with one entry per token, grown while decoding
    # transformers skips the mask under SDPA and the module says is_causal=False, so stock SDPA attends
    # to every key (eager builds a causal mask): PaliGemma fed no token types
    sdpa_bidirectional: bool = False


FAMILIES = {
    "llava": Family(lambda attn: tiny_llava(attn=attn), llava_batch),
    "llava_mistral_window": Family(lambda attn: tiny_llava(attn=attn, window=5), llava_batch),
    "qwen2_vl": Family(lambda attn: tiny_qwen2_vl(attn=attn), qwen_inputs, "mm_token_type_ids"),
    "qwen2_vl_window": Family(lambda attn: tiny_qwen2_vl(attn=attn, window=4), qwen_inputs, "mm_token_type_ids"),
    "paligemma": Family(
        lambda attn: tiny_paligemma(attn=attn), lambda: paligemma_inputs(prefix=None), sdpa_bidirectional=True
    ),
    "paligemma_prefix": Family(lambda attn: tiny_paligemma(attn=attn), paligemma_inputs, "token_type_ids"),
    "gemma3": Family(lambda attn: tiny_gemma3(attn=attn), gemma3_inputs, "token_type_ids"),
    "gemma3_no_token_types": Family(lambda attn: tiny_gemma3(attn=attn), lambda: gemma3_inputs(token_types=False)),
    "qwen2_5_vl": Family(lambda attn: tiny_qwen2_5_vl(attn=attn), qwen_inputs, "mm_token_type_ids"),
    "idefics3": Family(lambda attn: tiny_idefics3(attn=attn), idefics3_inputs),
    "internvl": Family(lambda attn: tiny_internvl(attn=attn), internvl_inputs),
    "mistral3_window": Family(lambda attn: tiny_mistral3(attn=attn), mistral3_inputs),
    "mistral3": Family(lambda attn: tiny_mistral3(attn=attn, window=None), mistral3_inputs),
    "llava_next": Family(lambda attn: tiny_llava_next(attn=attn), llava_next_inputs),
    "llava_onevision": Family(lambda attn: tiny_llava_onevision(attn=attn), llava_next_inputs),
}


def reference_model(family: Family) -> PreTrainedModel:
    register_reference_attention()
    model = family.build("eager")
    sub_configs = getattr(model.config, "sub_configs", {}) or {}
    model.set_attn_implementation(
        {"text_config": REFERENCE_IMPLEMENTATION} if "text_config" in sub_configs else REFERENCE_IMPLEMENTATION
    )
    return model


def request_for(model: PreTrainedModel, inputs: dict, spec: FutureMaskSpec) -> ReferenceRequest:
    visual = visual_token_mask(model.config, inputs["input_ids"])
    merge = None if spec.merge is None else (spec.merge.op, spec.merge.kernel, spec.merge.slots)
    valid = inputs.get("attention_mask")
    return ReferenceRequest(
        visual=visual.tolist(),
        mask=spec.mask,
        merge=merge,
        prompt_only=spec.decode_mode == "prefill" or spec.merge is not None,
        key_valid=None if valid is None else valid.bool().tolist(),
    )


def real_positions(inputs: dict, logits: torch.Tensor) -> torch.Tensor:
    return inputs.get("attention_mask", torch.ones(logits.shape[:2])).bool()


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("name", FAMILIES)
def test_causal_equals_stock(name: str, backend: str) -> None:
    family = FAMILIES[name]
    inputs = family.inputs()
    stock, model = family.build(backend), enable_future_attention(family.build(backend), backend)
    context = FutureAttention(FutureMaskSpec("causal"), visual_token_mask(model.config, inputs["input_ids"]))
    with torch.no_grad():
        expected = stock(**inputs).logits
        got = model(**inputs, future_attention=context).logits
    real = real_positions(inputs, got)
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_only_the_decoder_is_marked(name: str) -> None:
    """The masks act in the language model's layers, never in the vision tower, whatever is_causal says."""
    model = enable_future_attention(FAMILIES[name].build("sdpa"))
    marked = [m for m in model.modules() if getattr(m, DECODER_MARK, False)]
    assert len(marked) == model.config.get_text_config().num_hidden_layers


_REFERENCE_LOGITS: dict[tuple[str, str], torch.Tensor] = {}


def reference_logits(name: str, label: str) -> torch.Tensor:
    if (name, label) not in _REFERENCE_LOGITS:
        family = FAMILIES[name]
        inputs, model = family.inputs(), reference_model(family)
        with torch.no_grad(), reference_request(request_for(model, inputs, FutureMaskSpec.parse(label))):
            _REFERENCE_LOGITS[name, label] = model(**inputs).logits
    return _REFERENCE_LOGITS[name, label]


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("label", PREFILL_LABELS)
@pytest.mark.parametrize("name", FAMILIES)
def test_prompt_logits_equal_the_loop_reference(name: str, label: str, backend: str) -> None:
    family = FAMILIES[name]
    inputs = family.inputs()
    model = enable_future_attention(family.build(backend), backend)
    spec = FutureMaskSpec.parse(label)
    context = FutureAttention(spec, visual_token_mask(model.config, inputs["input_ids"]))
    with torch.no_grad():
        got = model(**inputs, future_attention=context).logits
    real = real_positions(inputs, got)
    if backend == "sdpa" and family.sdpa_bidirectional:
        # the model's own pattern already shows every key: a mask has nothing to add, merge nothing to pool
        with torch.no_grad():
            stock = family.build("sdpa")(**inputs).logits
        torch.testing.assert_close(got[real], stock[real], atol=ATOL, rtol=0)
        return
    torch.testing.assert_close(got[real], reference_logits(name, label)[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_reference_sees_the_masks(name: str) -> None:
    """Guards the comparison above: on every family some mask changes the logits (PaliGemma's prefix
    already shows its images the whole prefix, so only later keys are left to add)."""
    causal = reference_logits(name, "causal")
    changed = [
        label
        for label in ("Mf/prefill", "Mf+merge")
        if not torch.allclose(reference_logits(name, label), causal, atol=1e-4)
    ]
    assert changed == ["Mf/prefill", "Mf+merge"]


def test_the_reference_keeps_the_window_on_the_future_side() -> None:
    """With a window of 1 a row sees only itself on the past side, so nothing is admitted on the future side."""
    family = Family(lambda attn: tiny_llava(attn=attn, window=1), llava_batch)
    inputs, model = family.inputs(), reference_model(family)
    outputs = []
    for label in ("causal", "Mf/prefill"):
        with torch.no_grad(), reference_request(request_for(model, inputs, FutureMaskSpec.parse(label))):
            outputs.append(model(**inputs).logits)
    torch.testing.assert_close(outputs[0], outputs[1], atol=0, rtol=0)


@pytest.mark.parametrize("label", ["Mf+merge", "Mv2v+merge", "Mf+merge(op=mean,k=2,slots=2)"])
@pytest.mark.parametrize("name", FAMILIES)
def test_decode_after_merged_prefill_equals_causal_decode(name: str, label: str) -> None:
    family = FAMILIES[name]
    inputs = family.inputs()
    if "attention_mask" in inputs:  # one sequence: the cache step below feeds no mask
        inputs = {k: (v[:1] if k != "pixel_values" else v[:2]) for k, v in inputs.items() if k != "attention_mask"}
    model = enable_future_attention(family.build("sdpa"))
    ids = inputs.pop("input_ids")
    context = FutureAttention(FutureMaskSpec.parse(label), visual_token_mask(model.config, ids))
    logits, cache = prefill(model, context, ids, **inputs)
    next_ids = logits.argmax(-1, keepdim=True)
    extra = {}
    if family.per_token == "token_type_ids" and name.startswith("paligemma"):
        extra["token_type_ids"] = torch.ones_like(next_ids)  # PaliGemma: generated tokens are suffix
    causal_cache = copy.deepcopy(cache)
    with torch.no_grad():
        merged = model(input_ids=next_ids, past_key_values=cache, future_attention=context, **extra).logits
        causal = model(input_ids=next_ids, past_key_values=causal_cache, **extra).logits
    assert torch.equal(merged, causal)


@pytest.mark.parametrize("label", ["Mf/full", "Mv2t/full", "Mv2v/full"])
@pytest.mark.parametrize("name", [name for name, family in FAMILIES.items() if not family.sdpa_bidirectional])
def test_full_mode_decoding_equals_the_reference_over_the_whole_sequence(name: str, label: str) -> None:
    """Each decode step's logits equal one reference forward over prompt + generated tokens, with the
    per-token input grown the family's own way (PaliGemma: generated tokens are suffix, type 1)."""
    family = FAMILIES[name]
    inputs = family.inputs()
    if "attention_mask" in inputs:
        inputs = {k: (v[:1] if k != "pixel_values" else v[:2]) for k, v in inputs.items() if k != "attention_mask"}
    spec = FutureMaskSpec.parse(label)
    model, reference = enable_future_attention(family.build("sdpa")), reference_model(family)
    ids = inputs.pop("input_ids")
    tokens, steps = decode_n_tokens(model, spec, ids, 3, **inputs)
    request = request_for(model, {"input_ids": ids}, spec)
    generated_type = 1 if name.startswith("paligemma") else 0
    for n, logits in enumerate(steps):
        sequence = torch.cat([ids, tokens[:, :n]], dim=-1)
        grown = dict(inputs)
        if family.per_token is not None:
            per_token = inputs[family.per_token]
            grown[family.per_token] = torch.cat([per_token, per_token.new_full((1, n), generated_type)], dim=-1)
        with torch.no_grad(), reference_request(request):
            expected = reference(input_ids=sequence, use_cache=False, **grown).logits[:, -1]
        torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)
