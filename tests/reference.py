"""Brute-force references written from the paper's definitions with explicit loops.

Deliberately independent of fm_agent's vectorised code: nothing here imports it.
"""

from __future__ import annotations

import math

import torch


def allowed_loops(visual: list[bool], mask: str, key_valid: list[bool] | None = None) -> torch.Tensor:
    """(L, L) bool, straight from the table in the brief."""
    length = len(visual)
    key_valid = key_valid or [True] * length
    out = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        for j in range(length):
            if j <= i:
                ok = True
            elif mask == "causal":
                ok = False
            elif mask == "Mf":
                ok = visual[i]
            elif mask == "Mv2v":
                ok = visual[i] and visual[j]
            elif mask == "Mv2t":
                ok = visual[i] and not visual[j]
            else:
                raise ValueError(mask)
            out[i, j] = ok and key_valid[j]
    return out


def pooled_slots(future: list[float], op: str, kernel: int, slots: int) -> list[float]:
    """Steps 2-3 of merge for one row: 1-D pooling (kernel, stride kernel), then ``slots`` chunks."""
    windows = [future[s : s + kernel] for s in range(0, len(future), kernel)]
    reduce = max if op == "max" else (lambda xs: sum(xs) / len(xs))
    pooled = [reduce(w) for w in windows]
    n, out = len(pooled), []
    base, extra = divmod(n, slots)
    start = 0
    for s in range(slots):
        size = base + (1 if s < extra else 0)
        chunk = pooled[start : start + size]
        start += size
        out.append(reduce(chunk) if chunk else 0.0)
    return out


def merged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    visual: list[bool],
    mask: str,
    op: str,
    kernel: int,
    slots: int,
    key_valid: list[bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(B + C + M^c) @ V for one sequence. query (H, L, D), key/value (Hkv, L, D).

    Returns output (L, H, D) and probabilities (H, L, L).
    """
    heads, length, dim = query.shape
    groups = heads // key.shape[0]
    key_valid = key_valid or [True] * length
    admitted = allowed_loops(visual, mask, key_valid)
    sink = [j for j in range(length) if key_valid[j]][:slots]
    probs = torch.zeros(heads, length, length, dtype=torch.float64)
    out = torch.zeros(length, heads, dim, dtype=torch.float64)
    for h in range(heads):
        q, k, v = query[h].double(), key[h // groups].double(), value[h // groups].double()
        logits = q @ k.T / math.sqrt(dim)
        for i in range(length):
            row = logits[i].clone()
            if visual[i]:
                future = [row[j].item() for j in range(i + 1, length) if admitted[i, j]]
                if future:
                    for s, c in enumerate(pooled_slots(future, op, kernel, slots)):
                        if s < len(sink):
                            row[sink[s]] += c
            for j in range(length):
                if j > i or not key_valid[j]:
                    row[j] = -math.inf
            p = torch.softmax(row, dim=-1)
            probs[h, i] = p
            out[i, h] = p @ v
    return out, probs


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, L, L) bool -> (B, 1, L, L) additive float mask for transformers' stock eager attention."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
