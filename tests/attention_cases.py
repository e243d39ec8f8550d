"""Small attention-call cases shared by the merge tests: random q/k/v, padded visual layouts, the masks
transformers would hand over, and a stand-in for the attention module."""

from __future__ import annotations

import torch
from torch import nn

HEADS, KV_HEADS, DIM = 4, 2, 8


class FakeLayer(nn.Module):
    """The attributes transformers' attention functions read from an attention module."""

    is_causal = True
    num_key_value_groups = HEADS // KV_HEADS
    training = False


def random_qkv(batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, HEADS, length, DIM, generator=g, dtype=torch.float64).float() * 2
    key = torch.randn(batch, KV_HEADS, length, DIM, generator=g, dtype=torch.float64).float() * 2
    value = torch.randn(batch, KV_HEADS, length, DIM, generator=g, dtype=torch.float64).float()
    return query, key, value


def padded_batch(layouts: list[list[bool]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(v) for v in layouts)
    visual = torch.zeros(len(layouts), length, dtype=torch.bool)
    valid = torch.zeros(len(layouts), length, dtype=torch.bool)
    for b, layout in enumerate(layouts):
        cols = slice(length - len(layout), length) if side == "left" else slice(0, len(layout))
        visual[b, cols], valid[b, cols] = torch.tensor(layout), True
    return visual, valid


def base_masks(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What transformers' sdpa / eager mask builders give: causal AND key padding."""
    length = valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = (causal[None] & valid[:, None, :])[:, None]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return allowed, additive


LAYOUTS = [
    [False] * 3 + [True] * 5 + [False] * 2 + [True] * 6 + [False] * 3,
    [False, True, True, True, False, True, True, False, False, True, True, True, True],
]
