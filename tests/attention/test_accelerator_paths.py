"""The merge paths a GPU takes, against references: channels padded for CUDA's fused kernels, block
by block max scoring over many rows, fp32 scores from half-precision inputs, and the model-level
guarantees (fused == explicit softmax, merged decode == causal decode) on the device itself.

The CPU runs every path that does not need CUDA (the padding is forced there); the ``cuda`` cases
run where a CUDA device is present and are skipped elsewhere.
"""

from __future__ import annotations

import pytest
import torch
from attention_cases import DIM, HEADS, LAYOUTS, FakeLayer, base_masks, padded_batch, random_qkv
from decode_checks import next_step_logits_merged_and_causal
from reference import merged_attention
from tiny_models import llava_pixels, llava_prompt, tiny_llava

from fm_agent.attention import (
    FutureAttention,
    FutureMaskSpec,
    MergeOptions,
    enable_future_attention,
    future_attention_for,
    future_extension,
    interface,
    triton_merge,
    use_future_attention,
)
from fm_agent.attention.interface import future_sdpa_attention
from fm_agent.attention.merge import ROW_BLOCK, MergeLayout, max_future_scores

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _layout_batch(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences, the second left-padded by 7: frames of 40 visual tokens between 3 text tokens."""
    pattern = ([False] * 3 + [True] * 40) * (length // 43 + 1)
    visual = torch.tensor([pattern[:length], [False] * 7 + pattern[: length - 7]])
    valid = torch.ones(2, length, dtype=torch.bool)
    valid[1, :7] = False
    return visual & valid, valid


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask", ["Mf", "Mv2t"])
@pytest.mark.parametrize("dim", [8, 64])
def test_block_max_scores_equal_a_dense_reference(
    monkeypatch: pytest.MonkeyPatch, device: str, dtype: torch.dtype, mask: str, dim: int
) -> None:
    """Rows over several ROW_BLOCKs, a padded batch: the pooled max equals a dense fp64 max over the admitted
    keys of the very same (rounded) inputs, to fp32 accuracy whatever the input dtype. On CUDA, half inputs of
    width 64 take the fused Triton kernel (opted in here), the others the block-by-block torch path."""
    monkeypatch.setenv(triton_merge.ENABLE_VARIABLE, "1")
    length = 3 * ROW_BLOCK + 45
    visual, valid = _layout_batch(length)
    positions = torch.arange(length)
    future = future_extension(FutureMaskSpec(mask, merge=MergeOptions()), visual, visual, positions, positions, valid)
    layout = MergeLayout.build(MergeOptions(), visual.to(device), future.to(device))
    assert len(layout.block_first_rows[0]) > 2, "the case must span several row blocks"
    g = torch.Generator().manual_seed(3)
    queries = (torch.randn(2, HEADS, layout.rows.shape[1], dim, generator=g) * 2).to(dtype)
    keys = (torch.randn(2, HEADS, length, dim, generator=g) * 2).to(dtype)
    got = max_future_scores(queries.to(device), keys.to(device), layout, dim**-0.5, 0)
    assert got.dtype == torch.float32
    scores = queries.double() @ keys.double().transpose(-1, -2) * dim**-0.5  # (B, H, R, K)
    admitted = layout.admitted.cpu()[:, None]
    expected = scores.masked_fill(~admitted, float("-inf")).amax(-1, keepdim=True)
    expected = torch.where(torch.isfinite(expected), expected, torch.zeros_like(expected))
    rows = layout.row_valid.cpu()[:, None, :, None].expand_as(expected)
    torch.testing.assert_close(got.cpu().double()[rows], expected[rows], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,kernel,slots", [("max", 1, 1), ("max", 2, 2), ("mean", 3, 1)])
def test_padded_merge_channels_equal_brute_force(
    monkeypatch: pytest.MonkeyPatch, device: str, op: str, kernel: int, slots: int
) -> None:
    """Zero channels up to a multiple of 8 (what CUDA's flash and memory-efficient kernels need) leave the
    attention exactly the merged one. On the CPU the padding is forced, so CI checks it too."""
    monkeypatch.setattr(interface, "channel_alignment", lambda _device: 8)
    visual, valid = padded_batch(LAYOUTS, "left")
    query, key, value = random_qkv(len(LAYOUTS), visual.shape[1], seed=5)
    base, _ = base_masks(valid)
    spec = FutureMaskSpec("Mf", merge=MergeOptions(op=op, kernel=kernel, slots=slots))
    with use_future_attention(FutureAttention(spec, visual)):
        out, _ = future_sdpa_attention(FakeLayer(), *(t.to(device) for t in (query, key, value, base)))
    assert out.shape[-1] == DIM, "the padding channels are dropped from the output"
    for b in range(2):
        rows = valid[b].nonzero().flatten()
        expected, _ = merged_attention(
            query[b], key[b], value[b], visual[b].tolist(), "Mf", op, kernel, slots, valid[b].tolist()
        )
        torch.testing.assert_close(out[b, rows].cpu().double(), expected[rows], atol=1e-5, rtol=1e-5)


@CUDA
@pytest.mark.parametrize("label", ["Mf+merge", "Mv2v+merge", "Mv2t+merge"])
def test_cuda_merged_model_fused_equals_explicit_and_decodes_as_causal(label: str) -> None:
    """On the GPU, in fp32: the fused-kernel merge equals the explicit softmax(B + C + M), and decoding after
    a merged prefill is bit for bit the causal decode from the same cache."""
    sdpa = enable_future_attention(tiny_llava(), "sdpa").cuda()
    eager = enable_future_attention(tiny_llava(), "eager").cuda()
    ids, pixels = llava_prompt().cuda(), llava_pixels().cuda()
    spec = FutureMaskSpec.parse(label)
    with torch.no_grad():
        fused = sdpa(input_ids=ids, pixel_values=pixels, future_attention=future_attention_for(sdpa, ids, spec)).logits
        explicit = eager(
            input_ids=ids, pixel_values=pixels, future_attention=future_attention_for(eager, ids, spec)
        ).logits
    torch.testing.assert_close(fused, explicit, atol=1e-4, rtol=0)
    merged_step, causal_step = next_step_logits_merged_and_causal(sdpa, ids, pixels, spec)
    assert torch.equal(merged_step, causal_step)


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [64, 128])
def test_cuda_fused_kernel_equals_a_dense_reference(dtype: torch.dtype, dim: int) -> None:
    """The Triton kernel itself (no fallback can hide a failure here), with keys in a transposed layout
    and a cached prefix before the queries, as in a chunked prefill."""
    assert triton_merge.AVAILABLE, "CUDA builds of torch ship Triton"
    length, offset = 2 * ROW_BLOCK + 77, 5
    visual, valid = _layout_batch(length)
    positions = torch.arange(length)
    future = future_extension(FutureMaskSpec("Mf", merge=MergeOptions()), visual, visual, positions, positions, valid)
    future = future[:, offset:]
    layout = MergeLayout.build(MergeOptions(), visual[:, offset:].cuda(), future.cuda())
    g = torch.Generator().manual_seed(4)
    queries = (torch.randn(2, HEADS, layout.rows.shape[1], dim, generator=g) * 2).to(dtype)
    keys = (torch.randn(2, HEADS, dim, length, generator=g) * 2).to(dtype).transpose(-1, -2)  # strided keys
    got = triton_merge.fused_max_future_scores(
        queries.cuda(), keys.cuda(), layout.additive, layout.rows, dim**-0.5, offset
    ).cpu()
    scores = queries.double() @ keys.double().transpose(-1, -2) * dim**-0.5
    expected = scores.masked_fill(~layout.admitted.cpu()[:, None], float("-inf")).amax(-1)
    real = layout.row_valid.cpu()[:, None].expand_as(expected) & torch.isfinite(expected)
    assert real.any()
    torch.testing.assert_close(got.double()[real], expected[real], atol=1e-5, rtol=1e-5)
    assert torch.isinf(got[~torch.isfinite(expected)]).all(), "rows with nothing admitted stay -inf"


@CUDA
@pytest.mark.parametrize("fused", ["0", "1"])
def test_cuda_half_merge_equals_brute_force(monkeypatch: pytest.MonkeyPatch, fused: str) -> None:
    """bf16 on the GPU, the whole fused path (padded channels, the Triton scores, SDPA's fused kernel) against
    softmax(B + C + M^c) in fp64 on the same rounded inputs, to bf16 accuracy."""
    monkeypatch.setenv(triton_merge.ENABLE_VARIABLE, fused)
    length, dim, heads = ROW_BLOCK + 30, 64, 2
    visual, valid = _layout_batch(length)
    g = torch.Generator().manual_seed(9)
    query, key, value = (torch.randn(2, heads, length, dim, generator=g).to(torch.bfloat16) for _ in range(3))
    base, _ = base_masks(valid)
    layer = FakeLayer()
    layer.num_key_value_groups = 1
    with use_future_attention(FutureAttention(FutureMaskSpec("Mf", merge=MergeOptions()), visual)):
        fused, _ = future_sdpa_attention(layer, *(t.cuda() for t in (query, key, value, base)))
    for b in range(2):
        rows = valid[b].nonzero().flatten()
        expected, _ = merged_attention(
            query[b], key[b], value[b], visual[b].tolist(), "Mf", "max", 1, 1, valid[b].tolist()
        )
        torch.testing.assert_close(fused[b, rows].cpu().double(), expected[rows], atol=2e-2, rtol=2e-2)
