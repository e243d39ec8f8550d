"""Merge against a brute-force softmax(B + C + M^c), at the level of one attention call."""

from __future__ import annotations

import itertools

import pytest
import torch
from attention_cases import LAYOUTS, FakeLayer, base_masks, padded_batch, random_qkv
from reference import merged_attention

from fm_agent.attention import FutureAttention, FutureMaskSpec, MergeOptions, use_future_attention
from fm_agent.attention.interface import future_eager_attention, future_sdpa_attention

CASES = list(itertools.product(["Mf", "Mv2v", "Mv2t"], ["max", "mean"], [1, 2, 3], [1, 2]))


@pytest.mark.parametrize("mask,op,kernel,slots", CASES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_merge_matches_brute_force(mask: str, op: str, kernel: int, slots: int, side: str) -> None:
    visual, valid = padded_batch(LAYOUTS, side)
    query, key, value = random_qkv(len(LAYOUTS), visual.shape[1], seed=kernel * 10 + slots)
    spec = FutureMaskSpec(mask, merge=MergeOptions(op=op, kernel=kernel, slots=slots))
    sdpa_base, eager_base = base_masks(valid)
    with use_future_attention(FutureAttention(spec, visual)):
        sdpa_out, _ = future_sdpa_attention(FakeLayer(), query, key, value, sdpa_base)
        eager_out, probs = future_eager_attention(FakeLayer(), query, key, value, eager_base)
    for b in range(len(LAYOUTS)):
        rows = valid[b].nonzero().flatten()  # padded query rows are not compared (all their keys masked)
        ref_out, ref_probs = merged_attention(
            query[b], key[b], value[b], visual[b].tolist(), mask, op, kernel, slots, valid[b].tolist()
        )
        torch.testing.assert_close(sdpa_out[b, rows].double(), ref_out[rows], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(eager_out[b, rows].double(), ref_out[rows], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(probs[b][:, rows].double(), ref_probs[:, rows], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask", ["Mf", "Mv2v", "Mv2t"])
def test_merged_attention_is_exactly_lower_triangular(mask: str) -> None:
    visual, valid = padded_batch(LAYOUTS, "left")
    query, key, value = random_qkv(2, visual.shape[1], seed=7)
    _, eager_base = base_masks(valid)
    with use_future_attention(FutureAttention(FutureMaskSpec(mask, merge=MergeOptions()), visual)):
        _, probs = future_eager_attention(FakeLayer(), query, key, value, eager_base)
    # real query rows only: a left-padding row has every key masked, in stock transformers too
    upper = torch.ones(visual.shape[1], visual.shape[1], dtype=torch.bool).triu(1)[None, None] & valid[:, None, :, None]
    assert torch.count_nonzero(probs.masked_select(upper)) == 0
    with use_future_attention(FutureAttention(FutureMaskSpec(mask), visual)):
        _, unmerged = future_eager_attention(FakeLayer(), query, key, value, eager_base)
    assert torch.count_nonzero(unmerged.masked_select(upper)) > 0, "the unmerged mask does reach the future"


@pytest.mark.parametrize("spec", ["Mf/prefill", "Mv2v/prefill", "Mv2t/prefill", "Mf+merge", "Mv2t+merge"])
def test_text_rows_are_unchanged(spec: str) -> None:
    visual, valid = padded_batch(LAYOUTS, "right")
    query, key, value = random_qkv(2, visual.shape[1], seed=11)
    sdpa_base, _ = base_masks(valid)
    stock, _ = future_sdpa_attention(FakeLayer(), query, key, value, sdpa_base)
    with use_future_attention(FutureAttention(FutureMaskSpec.parse(spec), visual)):
        masked, _ = future_sdpa_attention(FakeLayer(), query, key, value, sdpa_base)
    text = ~visual & valid
    torch.testing.assert_close(masked[text], stock[text], atol=1e-6, rtol=0)
    assert not torch.allclose(masked[visual], stock[visual], atol=1e-4), "visual rows must change"
