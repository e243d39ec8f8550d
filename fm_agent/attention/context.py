"""Per-request attention state: the spec, the visual flags of the prompt, and a per-forward plan.

The mask is chosen per request, never by mutating the model: a :class:`FutureAttention` is
passed to ``model(..., future_attention=ctx)`` or activated around ``generate()`` with
:func:`use_future_attention`, which stores it in a :class:`contextvars.ContextVar`. A context
variable is private to its thread and asyncio task, so concurrent requests served from worker
threads or tasks cannot see each other's masks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from fm_agent_client.masks import FutureMaskSpec

from .masks import future_extension
from .merge import MergeLayout

_ACTIVE: ContextVar[FutureAttention | None] = ContextVar("fm_agent_future_attention", default=None)


@dataclass(frozen=True)
class AttentionPlan:
    """What every decoder layer of one forward needs; built once, shared by all layers.

    allowed: (B, 1, Q, K) bool. Unmerged masks: the full pattern (the model's own plus the admitted
    future). Merge: the model's own pattern, which merge never widens.
    merge: the pooled-future layout (None without merge).
    sink_index: (B, R, slots) long, for each visual row of ``merge.rows`` the keys its pooled scores
    are added to: the first ``slots`` keys the row itself can see (under a sliding window, the start
    of its window); -1 where the row sees fewer keys than there are slots.
    sink_keys: (B, 1, K, slots) one-hot key channels, only when every visual row of a sequence shares
    its sink keys (no window cuts them off): then merge runs in the fused causal kernel.
    """

    allowed: torch.Tensor | None
    merge: MergeLayout | None = None
    sink_index: torch.Tensor | None = None
    sink_keys: torch.Tensor | None = None


class FutureAttention:
    """One request's future-aware attention: a spec plus which prompt tokens are visual.

    visual: (B, P) bool over the prompt (P tokens, the expanded image-token positions True).
    Tokens past the prompt (generated ones) are text by definition.
    """

    def __init__(self, spec: FutureMaskSpec, visual: torch.Tensor) -> None:
        if visual.dim() == 1:
            visual = visual[None]
        if visual.dim() != 2:
            raise ValueError(f"visual flags must be (batch, length), got shape {tuple(visual.shape)}")
        self.spec = spec
        self.visual = visual.bool()
        self.prompt_length = int(visual.shape[-1])
        # One plan per distinct layer mask: a model with sliding and full layers alternates two.
        self._plans: dict[tuple, tuple[torch.Tensor | None, AttentionPlan | None]] = {}

    def __repr__(self) -> str:
        return f"FutureAttention({self.spec.label}, batch={self.visual.shape[0]}, prompt={self.prompt_length})"

    def _visual_for(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """Visual flags for absolute positions 0..length-1 of a batch of ``batch`` rows."""
        visual = self.visual.to(device)
        if visual.shape[0] != batch:
            if batch % visual.shape[0]:
                raise ValueError(f"batch of {batch} rows does not match visual flags for {visual.shape[0]}")
            visual = visual.repeat_interleave(batch // visual.shape[0], dim=0)  # beams / return sequences
        if length <= visual.shape[1]:
            return visual[:, :length]
        return torch.nn.functional.pad(visual, (0, length - visual.shape[1]), value=False)

    def plan(
        self,
        base_mask: torch.Tensor | None,
        batch: int,
        q_len: int,
        kv_len: int,
        device: torch.device,
        window: int | None = None,
        causal: bool = True,
    ) -> AttentionPlan | None:
        """The plan for one forward of one layer kind, or None when nothing changes (stock path).

        base_mask is the model's own mask for the layer as transformers hands it over; window the
        layer's sliding window (``kwargs["sliding_window"]``), None for full-attention layers;
        causal what the layer does when transformers skips its mask (None): SDPA then attends
        causally or, for a module with ``is_causal=False`` (PaliGemma without token types), to every key.
        """
        key = (id(base_mask), window, causal, q_len, kv_len, batch, str(device))
        cached = self._plans.get(key)
        if cached is not None and cached[0] is base_mask:
            return cached[1]
        plan = self._build_plan(base_mask, batch, q_len, kv_len, device, window, causal)
        if len(self._plans) >= 8:
            self._plans.clear()
        self._plans[key] = (base_mask, plan)
        return plan

    def _build_plan(
        self,
        base_mask: torch.Tensor | None,
        batch: int,
        q_len: int,
        kv_len: int,
        device: torch.device,
        window: int | None,
        causal: bool,
    ) -> AttentionPlan | None:
        if kv_len - q_len >= self.prompt_length and not self.spec.needs_full_recompute:
            return None  # only generated (text) queries: the ordinary cached causal step
        visual_keys = self._visual_for(batch, kv_len, device)
        key_positions = torch.arange(kv_len, device=device)
        query_positions = key_positions[kv_len - q_len :]
        visual_queries = visual_keys[:, kv_len - q_len :]
        own = _as_allowed(base_mask, batch, query_positions, key_positions, causal)[:, 0]  # (B, Q, K)
        # A real key is one some query may see; padding keys are hidden from every row. (The last
        # row alone would do for a causal layer, but under a window it sees only the last keys.)
        key_valid = own.any(dim=-2)
        if self.spec.needs_full_recompute and q_len < kv_len and visual_keys[:, : kv_len - q_len].any():
            raise RuntimeError(
                f"decode_mode='full' ({self.spec.label}) lets visual rows see generated tokens, so their cached "
                "keys/values go stale: decode without a cache (generate(..., use_cache=False)) or use "
                "fm_agent.attention.generate_with_mask, which does this for you."
            )
        future = future_extension(
            self.spec,
            visual_queries,
            visual_keys,
            query_positions,
            key_positions,
            key_valid,
            self.prompt_length,
            window,
        )
        future &= ~own  # keys the model already shows (bidirectional blocks) are neither added nor pooled twice
        if not future.any():
            return None
        if self.spec.merge is None:
            return AttentionPlan(allowed=(own | future)[:, None])
        layout = MergeLayout.build(self.spec.merge, visual_queries, future)
        row_visible = torch.gather(own, 1, layout.rows[:, :, None].expand(-1, -1, kv_len))  # (B, R, K)
        sink_index = _first_visible(row_visible, self.spec.merge.slots)
        return AttentionPlan(
            allowed=own[:, None],
            merge=layout,
            sink_index=sink_index,
            sink_keys=_shared_sink_keys(sink_index, layout.row_valid, kv_len),
        )


def _first_visible(visible: torch.Tensor, slots: int) -> torch.Tensor:
    """(B, R, K) bool -> (B, R, slots) long: the first ``slots`` True columns of each row, -1 past the last.

    One argmax per slot (slots is small): a cumsum rank over (B, R, K) would cost 8 bytes per entry.
    """
    remaining = visible.clone()
    found = []
    for _ in range(slots):
        first = remaining.to(torch.uint8).argmax(-1)  # (B, R): the first True (0 if none)
        found.append(torch.where(remaining.any(-1), first, torch.full_like(first, -1)))
        remaining.scatter_(-1, first[..., None], False)
    return torch.stack(found, dim=-1)


def _shared_sink_keys(sink_index: torch.Tensor, row_valid: torch.Tensor, kv_len: int) -> torch.Tensor | None:
    """(B, 1, K, slots) one-hot channels when all valid rows of each sequence share their sinks, else None."""
    first = sink_index[:, :1]  # (B, 1, slots); padded rows repeat row 0, so row 0 is a valid row or none exists
    same = (sink_index == first).all(-1) | ~row_valid
    if not bool(same.all()) or bool((first < 0).any()):
        return None
    positions = torch.arange(kv_len, device=sink_index.device)
    return (positions[None, :, None] == first).float()[:, None]  # (B, 1, K, slots)


def _as_allowed(
    base_mask: torch.Tensor | None,
    batch: int,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    causal: bool = True,
) -> torch.Tensor:
    """transformers' mask (None = plain causal or, with ``causal`` False, everything; bool; additive
    float) as (B, 1, Q, K) bool."""
    if base_mask is None:
        allowed = key_positions[None, :] <= query_positions[:, None]
        if not causal:
            allowed = torch.ones_like(allowed)
        return allowed[None, None].expand(batch, 1, -1, -1)
    if base_mask.dtype == torch.bool:
        return base_mask.expand(batch, 1, -1, -1)
    return (base_mask == 0).expand(batch, 1, -1, -1)


def active_future_attention() -> FutureAttention | None:
    """The request activated in this thread / task by :func:`use_future_attention`, if any."""
    return _ACTIVE.get()


@contextlib.contextmanager
def use_future_attention(context: FutureAttention | None) -> Iterator[FutureAttention | None]:
    """Activate ``context`` for every forward run inside the block (needed for ``generate()``,
    which refuses unknown keyword arguments)."""
    token = _ACTIVE.set(context)
    try:
        yield context
    finally:
        _ACTIVE.reset(token)
