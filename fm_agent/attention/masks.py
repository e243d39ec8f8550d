"""The paper's masks as boolean "allowed" matrices, built from per-token visual flags.

Row ``i`` is a query, column ``j`` a key; ``True`` means the query may attend to the key.
Every mask is the causal mask plus, for visual rows only, an admitted set of later keys:

=========  =============================================
``causal``  ``j <= i``
``Mf``      ``j <= i`` or ``i`` visual
``Mv2v``    ``j <= i`` or (``i`` visual and ``j`` visual)
``Mv2t``    ``j <= i`` or (``i`` visual and ``j`` text)
=========  =============================================

Padding is AND-ed over keys, as transformers' own mask functions do.
"""

from __future__ import annotations

import torch

from fm_agent_client.masks import FutureMaskSpec, MaskKind


def admitted_future_keys(
    mask: MaskKind,
    visual_keys: torch.Tensor,
    key_positions: torch.Tensor,
    prompt_length: int | None = None,
) -> torch.Tensor:
    """Which keys a visual query may see when they lie in its future.

    visual_keys: (B, K) bool; key_positions: (K,) absolute positions of those keys.
    ``prompt_length`` restricts the future to the prompt (decode mode ``prefill``): tokens
    generated later never become visible to visual rows, with or without a KV cache.
    Returns (B, K) bool.
    """
    if mask == "causal":
        return torch.zeros_like(visual_keys)
    if mask == "Mf":
        admitted = torch.ones_like(visual_keys)
    elif mask == "Mv2v":
        admitted = visual_keys.clone()
    elif mask == "Mv2t":
        admitted = ~visual_keys
    else:
        raise ValueError(f"unknown mask {mask!r}")
    if prompt_length is not None:
        admitted &= (key_positions < prompt_length)[None, :]
    return admitted


def future_extension(
    spec: FutureMaskSpec,
    visual_queries: torch.Tensor,
    visual_keys: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    prompt_length: int | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """The entries a mask adds on top of the causal one: later, admitted, non-padding keys of visual rows.

    visual_queries: (B, Q) bool; visual_keys: (B, K) bool; positions are absolute, (Q,) and (K,);
    key_valid: (B, K) bool (False on padding). ``window``: a sliding-window layer's size W, kept on
    the future side too (key j is admitted to row i only if j - i < W, as i - j < W on the past
    side). Returns (B, Q, K) bool.
    """
    limit = prompt_length if spec.decode_mode == "prefill" or spec.merge is not None else None
    admitted = admitted_future_keys(spec.mask, visual_keys, key_positions, limit)
    if key_valid is not None:
        admitted = admitted & key_valid
    later = key_positions[None, :] > query_positions[:, None]  # (Q, K)
    if window is not None:
        later &= key_positions[None, :] - query_positions[:, None] < window
    return visual_queries[:, :, None] & later[None] & admitted[:, None, :]


def allowed_matrix(
    visual: torch.Tensor,
    mask: MaskKind | FutureMaskSpec,
    padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """The boolean attention pattern of an unmerged mask over a whole prompt.

    visual: (L,) or (B, L) bool, True at the expanded image-token positions of every frame;
    padding: the usual 2-D attention mask, (B, L) with 1/True on real tokens.
    Returns (B, L, L) bool (or (L, L) for 1-D input). This is the reference the attention kernels
    are tested against, and what a user prints to see what a mask does.
    """
    spec = mask if isinstance(mask, FutureMaskSpec) else FutureMaskSpec(mask=mask)
    squeeze = visual.dim() == 1
    visual = visual.bool().reshape(-1, visual.shape[-1])
    length = visual.shape[-1]
    positions = torch.arange(length, device=visual.device)
    key_valid = None if padding is None else padding.bool().reshape(visual.shape)
    causal = (positions[None, :] <= positions[:, None])[None].expand(visual.shape[0], -1, -1)
    if key_valid is not None:
        causal = causal & key_valid[:, None, :]
    allowed = causal | future_extension(spec, visual, visual, positions, positions, key_valid, length)
    return allowed[0] if squeeze else allowed


def render_allowed(allowed: torch.Tensor, visual: torch.Tensor) -> str:
    """ASCII picture of an (L, L) pattern, rows labelled V (visual) or T (text)."""
    rows = []
    for i in range(allowed.shape[0]):
        tag = "V" if bool(visual[i]) else "T"
        rows.append(f"{i:3d} {tag} " + "".join("#" if a else "." for a in allowed[i].tolist()))
    return "\n".join(rows)
