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

    allowed: (B, 1, Q, K) bool, the full pattern for unmerged masks (None with merge).
    merge: the pooled-future layout (None without merge).
    sink_keys: (B, 1, K, slots) one-hot key channels marking the first ``slots`` real keys.
    """

    allowed: torch.Tensor | None
    merge: MergeLayout | None
    sink_keys: torch.Tensor | None


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
        self._plan_key: tuple | None = None
        self._plan: AttentionPlan | None = None

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
        self, base_mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int, device: torch.device
    ) -> AttentionPlan | None:
        """The plan for one forward, or None when no visual query is present (stock path)."""
        key = (q_len, kv_len, batch, str(device))
        if self._plan_key is not None and self._plan_key[0] is base_mask and self._plan_key[1:] == key:
            return self._plan
        plan = self._build_plan(base_mask, batch, q_len, kv_len, device)
        self._plan_key, self._plan = (base_mask, *key), plan
        return plan

    def _build_plan(
        self, base_mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int, device: torch.device
    ) -> AttentionPlan | None:
        if kv_len - q_len >= self.prompt_length and not self.spec.needs_full_recompute:
            return None  # only generated (text) queries: the ordinary cached causal step
        visual_keys = self._visual_for(batch, kv_len, device)
        key_positions = torch.arange(kv_len, device=device)
        query_positions = key_positions[kv_len - q_len :]
        visual_queries = visual_keys[:, kv_len - q_len :]
        base_allowed = _as_allowed(base_mask, batch, query_positions, key_positions)
        key_valid = base_allowed[:, 0, -1, :]  # the last query sees every real key
        if self.spec.needs_full_recompute and q_len < kv_len and visual_keys[:, : kv_len - q_len].any():
            raise RuntimeError(
                f"decode_mode='full' ({self.spec.label}) lets visual rows see generated tokens, so their cached "
                "keys/values go stale: decode without a cache (generate(..., use_cache=False)) or use "
                "fm_agent.attention.generate_with_mask, which does this for you."
            )
        future = future_extension(
            self.spec, visual_queries, visual_keys, query_positions, key_positions, key_valid, self.prompt_length
        )
        if not future.any():
            return None
        if self.spec.merge is None:
            return AttentionPlan(allowed=(base_allowed[:, 0] | future)[:, None], merge=None, sink_keys=None)
        slots = self.spec.merge.slots
        first_real = key_valid.long().argmax(-1)  # (B,) first non-padding key: the attention sink
        sink_index = first_real[:, None] + torch.arange(slots, device=device)[None, :]  # (B, slots)
        sink_keys = (key_positions[None, :, None] == sink_index[:, None, :]).float()[:, None]  # (B,1,K,slots)
        layout = MergeLayout.build(self.spec.merge, visual_queries, future)
        return AttentionPlan(allowed=None, merge=layout, sink_keys=sink_keys)


def _as_allowed(
    base_mask: torch.Tensor | None, batch: int, query_positions: torch.Tensor, key_positions: torch.Tensor
) -> torch.Tensor:
    """transformers' mask (None = plain causal, bool, or additive float) as (B, 1, Q, K) bool."""
    if base_mask is None:
        causal = key_positions[None, :] <= query_positions[:, None]
        return causal[None, None].expand(batch, 1, -1, -1)
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
