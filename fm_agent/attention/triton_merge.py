"""The default merge's pooled score (max over each visual row's admitted future keys) as one fused
GPU kernel, for fp16/bf16 models on CUDA.

Why a kernel: the block-by-block torch path (:func:`fm_agent.attention.merge.max_future_scores`)
writes every visual row's fp32 scores against its later keys to memory, reads them back for the
max, and launches a few kernels per 128-row block per layer. On a LLaVA-7B shape at 4096 tokens
that made a merged prefill 1.8x the causal one on an H200. Here each program keeps a block of
query rows in registers, walks the keys after its first row tile by tile (one tensor-core dot with
fp32 accumulation, the -inf/0 admission mask added, a running max), and writes one fp32 value per
row and head: the scores never reach memory.

Numerics: fp16/bf16 products are exact in fp32 and the dot accumulates in fp32, so the result
equals the torch path's (half-input GEMM with fp32 output) up to summation order. fp32 inputs are
never sent here (Triton would round them to TF32).

Status: opt-in (``FM_AGENT_FUSED_MERGE=1``). The kernel was checked against a dense fp64 reference in
Triton's CPU interpreter (fp16; the interpreter cannot hold bf16), not yet on a GPU: the session that
wrote it lost its GPU before the run. ``tests/attention/test_accelerator_paths.py`` runs it, and the
merge path with it, wherever CUDA is present (``bash launch/gpu_checks.sh OUT`` runs them and profiles
both paths); once those pass on a GPU it can become the default.
Triton is optional: without it (the CPU build of torch) :data:`AVAILABLE` is False and the torch
path runs.
"""

from __future__ import annotations

import os

import torch

try:  # the CUDA builds of torch ship Triton; the CPU build does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None
    tl = None

AVAILABLE = triton is not None
HEAD_DIMS = (16, 32, 64, 128, 256)  # tl.dot needs a power-of-two inner size of at least 16
BLOCK_ROWS = 64
BLOCK_KEYS = 64


ENABLE_VARIABLE = "FM_AGENT_FUSED_MERGE"


def supports(queries: torch.Tensor) -> bool:
    """Whether the merge path hands these (B, H, R, D) visual queries to :func:`fused_max_future_scores`:
    opted in, Triton present, half precision on CUDA, a head width ``tl.dot`` takes."""
    return (
        AVAILABLE
        and os.environ.get(ENABLE_VARIABLE) == "1"
        and queries.is_cuda
        and queries.dtype in (torch.float16, torch.bfloat16)
        and queries.shape[-1] in HEAD_DIMS
    )


if AVAILABLE:

    @triton.jit
    def _max_future_kernel(
        q_ptr,
        k_ptr,
        add_ptr,
        rows_ptr,
        out_ptr,
        num_rows,
        num_keys,
        query_offset,
        scaling,
        s_qh,
        s_qr,
        s_qd,
        s_kh,
        s_kk,
        s_kd,
        s_ar,
        s_ak,
        s_oh,
        s_or,
        HEAD_DIM: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
    ):
        block = tl.program_id(0)
        head = tl.program_id(1)
        offs_m = block * BM + tl.arange(0, BM)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < num_rows
        q = tl.load(
            q_ptr + head * s_qh + offs_m[:, None] * s_qr + offs_d[None, :] * s_qd, mask=row_ok[:, None], other=0.0
        )
        # Rows are sorted by position (padded rows, at the end, repeat index 0 and admit nothing): no key
        # before the block's first row's successor is admitted to any row of the block.
        first_key = query_offset + tl.max(tl.load(rows_ptr + block * BM + tl.arange(0, 1)), axis=0) + 1
        best = tl.full([BM], float("-inf"), tl.float32)
        for start in tl.range((first_key // BN) * BN, num_keys, BN):
            offs_n = start + tl.arange(0, BN)
            key_ok = offs_n < num_keys
            k = tl.load(
                k_ptr + head * s_kh + offs_n[None, :] * s_kk + offs_d[:, None] * s_kd, mask=key_ok[None, :], other=0.0
            )
            scores = tl.dot(q, k) * scaling
            admitted = tl.load(
                add_ptr + offs_m[:, None] * s_ar + offs_n[None, :] * s_ak,
                mask=row_ok[:, None] & key_ok[None, :],
                other=float("-inf"),
            )
            best = tl.maximum(best, tl.max(scores + admitted, axis=1))
        tl.store(out_ptr + head * s_oh + offs_m * s_or, best, mask=row_ok)


def fused_max_future_scores(
    queries: torch.Tensor, keys: torch.Tensor, additive: torch.Tensor, rows: torch.Tensor, scaling: float, offset: int
) -> torch.Tensor:
    """(B, H, R) fp32 max of ``scaling * q.k + additive`` over the keys, -inf where nothing is admitted.

    queries: (B, H, R, D) fp16/bf16 on CUDA; keys: (B, H, K, D) same dtype; additive: (B, R, K) fp32 (0 on
    admitted keys, -inf elsewhere); rows: (B, R) query index of each visual row; offset: cached keys before
    the current queries.
    """
    batch, heads, num_rows, dim = queries.shape
    num_keys = keys.shape[2]
    out = torch.full((batch, heads, num_rows), float("-inf"), device=queries.device, dtype=torch.float32)
    if num_rows == 0 or num_keys == 0:
        return out
    rows = rows.to(torch.int32).contiguous()
    grid = (triton.cdiv(num_rows, BLOCK_ROWS), heads)
    for b in range(batch):
        q, k, a, o = queries[b], keys[b], additive[b], out[b]
        _max_future_kernel[grid](
            q,
            k,
            a,
            rows[b],
            o,
            num_rows,
            num_keys,
            offset,
            scaling,
            q.stride(0),
            q.stride(1),
            q.stride(2),
            k.stride(0),
            k.stride(1),
            k.stride(2),
            a.stride(0),
            a.stride(1),
            o.stride(0),
            o.stride(1),
            HEAD_DIM=dim,
            BM=BLOCK_ROWS,
            BN=BLOCK_KEYS,
        )
    return out
