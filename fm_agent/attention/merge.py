"""Merge: pool each visual row's admitted future logits and add them to the first prefix keys.

``attn = softmax(B + C(B, mu) + M^c)``: C is zero except on the first ``slots`` key columns of
visual rows, so the final attention is exactly lower-triangular and decoding keeps the ordinary
KV cache. The index work (which key falls in which window and slot) depends only on the token
layout, so :class:`MergeLayout` is computed once per forward and shared by every layer and head.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from fm_agent_client.masks import MergeOptions

from . import triton_merge


def _array_split_chunk(window: torch.Tensor, num_windows: torch.Tensor, slots: int) -> torch.Tensor:
    """Chunk id of each window when ``num_windows`` windows are split into ``slots`` contiguous chunks.

    Same rule as ``numpy.array_split``: the first ``n % slots`` chunks hold one extra window.
    window: (..., W) long; num_windows: (...,) long. Returns (..., W) long.
    """
    base = (num_windows // slots)[..., None]
    extra = (num_windows % slots)[..., None]
    big = base + 1
    cut = extra * big
    small_chunk = extra + (window - cut) // base.clamp(min=1)
    return torch.where(window < cut, window // big, small_chunk)


# Rows scored per matmul by max_future_scores: each block skips the keys before its first row.
ROW_BLOCK = 128


@dataclass(frozen=True)
class MergeLayout:
    """Where every admitted future key of every visual row goes. Shapes: B batch, R rows, K keys.

    rows: (B, R) long, query indices (inside the current query chunk) of visual rows; padded rows
    repeat index 0 and have no admitted keys. admitted: (B, R, K) bool.
    additive: (B, R, K) fp32, 0 on admitted keys and -inf elsewhere: the default (max, one slot) case
    folds it into the score matmul, see :func:`max_future_scores`.
    key_slot: (B, R, K) long, slot of each key for ``max`` (``slots`` = not pooled).
    key_window / window_slot / window_count / slot_windows: the two-stage ``mean`` bookkeeping.
    block_first_rows: for the default case, the first row's query index of each ``ROW_BLOCK`` block
    per sequence, read to the host once per forward: every layer needs them to slice its keys, and
    reading them off a GPU tensor block by block would stall the stream at every block of every layer.
    """

    options: MergeOptions
    rows: torch.Tensor
    row_valid: torch.Tensor
    admitted: torch.Tensor
    additive: torch.Tensor | None
    key_slot: torch.Tensor | None
    key_window: torch.Tensor | None
    window_slot: torch.Tensor | None
    window_count: torch.Tensor | None
    slot_windows: torch.Tensor | None
    block_first_rows: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def build(cls, options: MergeOptions, visual_queries: torch.Tensor, future: torch.Tensor) -> MergeLayout:
        """visual_queries: (B, Q) bool; future: (B, Q, K) bool, the admitted later keys of each row."""
        batch = visual_queries.shape[0]
        counts = visual_queries.sum(-1)
        num_rows = int(counts.max()) if batch else 0
        order = torch.argsort((~visual_queries).to(torch.int8), dim=-1, stable=True)[:, :num_rows]
        row_valid = torch.arange(num_rows, device=order.device)[None, :] < counts[:, None]
        rows = torch.where(row_valid, order, torch.zeros_like(order))
        admitted = torch.gather(future, 1, rows[:, :, None].expand(-1, -1, future.shape[-1]))
        admitted &= row_valid[:, :, None]

        k, p = options.kernel, options.slots
        if options.op == "max" and p == 1:  # the default: no window bookkeeping, max of maxes is the max
            additive = torch.zeros(admitted.shape, device=admitted.device).masked_fill(~admitted, float("-inf"))
            first_rows = tuple(tuple(r) for r in rows[:, ::ROW_BLOCK].tolist())
            return cls(options, rows, row_valid, admitted, additive, None, None, None, None, None, first_rows)
        rank = admitted.long().cumsum(-1) - 1
        num_keys = admitted.sum(-1)
        num_windows = (num_keys + k - 1) // k  # (B, R)
        max_windows = max(int(num_windows.max()) if num_windows.numel() else 0, 1)
        window = torch.where(admitted, rank // k, torch.full_like(rank, max_windows))
        window_ids = torch.arange(max_windows, device=rank.device).expand(*num_windows.shape, -1)
        window_slot = _array_split_chunk(window_ids, num_windows, p)
        window_slot = torch.where(window_ids < num_windows[..., None], window_slot, torch.full_like(window_slot, p))

        if options.op == "max":
            padded = torch.cat([window_slot, torch.full_like(window_slot[..., :1], p)], dim=-1)
            key_slot = torch.gather(padded, -1, window)
            return cls(options, rows, row_valid, admitted, None, key_slot, None, None, None, None)
        window_count = torch.zeros(*admitted.shape[:2], max_windows + 1, device=rank.device)
        window_count.scatter_add_(-1, window, admitted.float())
        slot_windows = torch.zeros(*admitted.shape[:2], p + 1, device=rank.device)
        slot_windows.scatter_add_(-1, window_slot, torch.ones_like(window_slot, dtype=torch.float))
        return cls(
            options,
            rows,
            row_valid,
            admitted,
            None,
            None,
            window,
            window_slot,
            window_count[..., :max_windows],
            slot_windows[..., :p],
        )


def merge_future_scores(scores: torch.Tensor, layout: MergeLayout) -> torch.Tensor:
    """Pool the admitted future logits of each visual row into ``slots`` values.

    scores: (B, H, R, K) fp32 pre-softmax logits of the visual rows against every key.
    Returns C's non-zero part, (B, H, R, slots) fp32; rows or slots with nothing admitted get 0.
    """
    options = layout.options
    heads = scores.shape[1]
    if options.op == "max":
        if options.slots == 1:
            pooled = scores.masked_fill(~layout.admitted[:, None], float("-inf")).amax(-1, keepdim=True)
        else:
            assert layout.key_slot is not None  # built for max with several slots
            index = layout.key_slot[:, None].expand(-1, heads, -1, -1)
            pooled = scores.new_full((*scores.shape[:3], options.slots + 1), float("-inf"))
            pooled = pooled.scatter_reduce(-1, index, scores, reduce="amax", include_self=True)[..., : options.slots]
        return torch.where(torch.isfinite(pooled), pooled, torch.zeros_like(pooled))

    assert layout.key_window is not None and layout.window_count is not None  # built for mean
    assert layout.window_slot is not None and layout.slot_windows is not None
    windows = layout.window_count.shape[-1]
    index = layout.key_window[:, None].expand(-1, heads, -1, -1)
    sums = scores.new_zeros((*scores.shape[:3], windows + 1))
    sums.scatter_add_(-1, index, scores.masked_fill(~layout.admitted[:, None], 0.0))
    window_means = sums[..., :windows] / layout.window_count[:, None].clamp(min=1.0)
    slot_index = layout.window_slot[:, None].expand(-1, heads, -1, -1)
    slot_sums = scores.new_zeros((*scores.shape[:3], options.slots + 1))
    slot_sums.scatter_add_(-1, slot_index, window_means)
    return slot_sums[..., : options.slots] / layout.slot_windows[:, None].clamp(min=1.0)


# False once the fused kernel failed in this process (an unsupported GPU, say): the torch path then runs.
_FUSED_KERNEL_OK = [True]
# Devices whose GEMMs take half-precision inputs and give fp32 scores (``out_dtype``); learnt per
# device type on first use, since the overload exists for CUDA only (and not in every torch release).
_HALF_GEMM_TO_FP32: dict[str, bool] = {}


def fp32_scores(initial: torch.Tensor, queries: torch.Tensor, keys_t: torch.Tensor, scaling: float) -> torch.Tensor:
    """``initial + scaling * queries @ keys_t`` in fp32, whatever the inputs' dtype.

    fp16/bf16 inputs on a GPU go straight into a half-precision GEMM with fp32 output: the product of
    two fp16 or bf16 numbers is exact in fp32 and the GEMM accumulates in fp32, so the scores equal
    those of the upcast inputs up to summation order, at tensor-core speed instead of the fp32 rate
    (about 15x slower on an H200). Elsewhere the inputs are upcast first.
    """
    if queries.dtype != torch.float32 and _HALF_GEMM_TO_FP32.get(queries.device.type, queries.is_cuda):
        try:
            return torch.baddbmm(initial, queries, keys_t, alpha=scaling, out_dtype=torch.float32)
        except (RuntimeError, NotImplementedError, TypeError):
            _HALF_GEMM_TO_FP32[queries.device.type] = False
    return torch.baddbmm(initial, queries.float(), keys_t.float(), alpha=scaling)


def max_future_scores(
    visual_queries: torch.Tensor, keys: torch.Tensor, layout: MergeLayout, scaling: float, query_offset: int
) -> torch.Tensor:
    """The default merge (op max, one slot) without materialising masked copies of the scores.

    visual_queries: (B, H, R, D); keys: (B, H, K, D) (query heads, GQA already expanded); any float dtype,
    the scores are fp32 (:func:`fp32_scores`).
    The -inf mask is the matmul's initial value (``baddbmm``), and each block of rows only scores
    the keys after its first row, skipping the lower triangle that is never admitted.
    Returns (B, H, R, 1) fp32, 0 for rows with nothing admitted.
    """
    assert layout.additive is not None  # the (max, one slot) layout
    out = None
    if _FUSED_KERNEL_OK[0] and triton_merge.supports(visual_queries):
        try:
            out = triton_merge.fused_max_future_scores(
                visual_queries, keys, layout.additive, layout.rows, scaling, query_offset
            )[..., None]
        except Exception as error:  # a Triton compile or launch failure: keep serving on the torch path
            _FUSED_KERNEL_OK[0] = False
            warnings.warn(f"fused merge kernel unavailable ({error!r}); using the torch path", stacklevel=2)
    if out is None:
        out = _blockwise_max_scores(visual_queries, keys, layout, scaling, query_offset)
    return torch.where(torch.isfinite(out), out, torch.zeros_like(out))


def _blockwise_max_scores(
    visual_queries: torch.Tensor, keys: torch.Tensor, layout: MergeLayout, scaling: float, query_offset: int
) -> torch.Tensor:
    """:func:`max_future_scores` in torch ops, ``ROW_BLOCK`` rows per GEMM; -inf where nothing is admitted."""
    assert layout.additive is not None
    batch, heads, rows, _ = visual_queries.shape
    out = visual_queries.new_full((batch, heads, rows, 1), float("-inf"), dtype=torch.float32)
    for b in range(batch):
        keys_t = keys[b].transpose(-1, -2)  # (H, D, K)
        for block, r0 in enumerate(range(0, rows, ROW_BLOCK)):
            r1 = min(r0 + ROW_BLOCK, rows)
            first_key = query_offset + layout.block_first_rows[b][block] + 1  # rows are sorted by position
            if first_key >= keys.shape[2]:
                break
            scores = fp32_scores(
                layout.additive[b, None, r0:r1, first_key:],
                visual_queries[b, :, r0:r1],
                keys_t[:, :, first_key:],
                scaling,
            )
            out[b, :, r0:r1, 0] = scores.amax(-1)
    return out
