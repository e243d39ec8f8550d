"""Brute-force references written from the paper's definitions with explicit loops.

Deliberately independent of fm_agent's vectorised code: nothing here imports it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

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


# ---------------------------------------------------------------------------------------------
# A whole-model reference: an attention implementation for transformers that applies the brief's
# rules with loops, on top of whatever mask the model itself built for the layer (padding,
# sliding windows, bidirectional image or prefix blocks). Register it, switch a model's text config
# to it, and describe the request with ``reference_request``.


@dataclass
class ReferenceRequest:
    """visual / key_valid: per sequence, per prompt position; merge: (op, kernel, slots) or None;
    prompt_only: later keys past the prompt (generated tokens) are never admitted."""

    visual: list[list[bool]]
    mask: str
    merge: tuple[str, int, int] | None = None
    prompt_only: bool = True
    key_valid: list[list[bool]] | None = None


_REQUEST: list[ReferenceRequest | None] = [None]
REFERENCE_IMPLEMENTATION = "reference_loops"


@contextlib.contextmanager
def reference_request(request: ReferenceRequest) -> Iterator[None]:
    _REQUEST[0] = request
    try:
        yield
    finally:
        _REQUEST[0] = None


def _admits(mask: str, visual_i: bool, visual_j: bool) -> bool:
    if not visual_i or mask == "causal":
        return False
    return {"Mf": True, "Mv2v": visual_j, "Mv2t": not visual_j}[mask]


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention signature; query (B, H, Q, D), key/value (B, Hkv, K, D) -> (B, Q, H, D).

    Per row: the model's own visible keys; plus, for a visual row, later keys the mask admits that
    the own mask does not show, within the prompt (prefill/merge), on real keys, and within the
    layer's sliding window on the future side too (j - i < W). Unmerged: softmax over both. Merge:
    their logits pooled into slots, slot s added to the row's s-th own visible key, softmax over
    the own keys only.
    """
    request = _REQUEST[0]
    batch, heads, q_len, dim = query.shape
    kv_len = key.shape[2]
    groups = heads // key.shape[1]
    scaling = scaling if scaling is not None else dim**-0.5
    window = kwargs.get("sliding_window")
    own = torch.ones(batch, q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
    if attention_mask is not None:
        mask = attention_mask[:, 0, :, :kv_len]
        own = mask if mask.dtype == torch.bool else mask == 0
        own = own.expand(batch, q_len, kv_len)
    out = torch.zeros(batch, q_len, heads, dim, dtype=torch.float64)
    for b in range(batch):
        prompt = len(request.visual[b]) if request else 0

        def visual(p: int) -> bool:
            return bool(request and p < prompt and request.visual[b][p])

        def valid(p: int) -> bool:
            if request is None or request.key_valid is None or p >= prompt:
                return True
            return bool(request.key_valid[b][p])

        for h in range(heads):
            q, k, v = query[b, h].double(), key[b, h // groups].double(), value[b, h // groups].double()
            logits = q @ k.T * scaling
            for r in range(q_len):
                i = kv_len - q_len + r
                row_own = [bool(own[b, r, j]) for j in range(kv_len)]
                future = []
                for j in range(i + 1, kv_len):
                    if request is None or row_own[j] or not valid(j):
                        continue
                    if request.prompt_only and j >= prompt:
                        continue
                    if window is not None and j - i >= window:
                        continue
                    if _admits(request.mask, visual(i), visual(j)):
                        future.append(j)
                row = logits[r].clone()
                visible = list(row_own)
                if request is not None and request.merge is not None:
                    if future:
                        op, kernel, slots = request.merge
                        sinks = [j for j in range(kv_len) if row_own[j]][:slots]
                        pooled = pooled_slots([row[j].item() for j in future], op, kernel, slots)
                        for s, c in enumerate(pooled):
                            if s < len(sinks):
                                row[sinks[s]] += c
                else:
                    for j in future:
                        visible[j] = True
                for j in range(kv_len):
                    if not visible[j]:
                        row[j] = -math.inf
                if any(visible):
                    out[b, r, h] = torch.softmax(row, dim=-1) @ v
    return out.to(query.dtype), None


def register_reference_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(REFERENCE_IMPLEMENTATION, reference_attention)
    AttentionMaskInterface.register(REFERENCE_IMPLEMENTATION, eager_mask)
