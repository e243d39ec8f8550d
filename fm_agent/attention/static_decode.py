"""Cached decoding on a fixed-capacity KV cache, replayed from a CUDA graph on a GPU (gpt-fast style).

Why: on a GPU a cached decode step of a large model is bound by the host, not the device. On an H200
a LLaVA-7B-shaped token took 18 ms through transformers' module stack against a weight-read floor of
about 3 ms (docs/latency.md): the step is some 15 kernel launches per layer issued one by one from
Python. A CUDA graph records those launches once and replays them all with one call, but it needs
every tensor the step touches at a fixed address with a fixed shape. So the cache here is a buffer of
fixed capacity per layer (``(B, kv_heads, capacity, head_dim)``), the new token's key and value are
written into it in place at their position, and attention reads the whole buffer under a boolean mask
that shows each row its real positions so far.

The step's arithmetic is :class:`~fm_agent.attention.fast_decode.FastDecoder`'s (the same function,
``FastDecoder._layers``, with ``cache_position``); what differs from the reference path is only that
attention runs over the whole buffer with a mask. Masked keys add exact zeros to the softmax, so the
tokens are the reference path's (tested for every mask, padded batches and sampling on the CPU, and
against the reference on a GPU where one is present); the logits are equal up to the attention
kernel's summation order, not bit for bit, so this is an option and not the default.

Decoding starts from the :class:`~transformers.DynamicCache` a prefill filled: the first step copies it
into the buffers (every mask, merge included, acts in the prefill only, so the decode step is the
stock causal one for all of them) and later steps leave that cache untouched. A graph is captured once
per (batch, capacity, dtype) and kept (at most ``max_graphs``, oldest dropped first). A capacity is
the prompt plus ``reserve`` generated tokens, rounded up to ``capacity_step`` so prompts of similar
length share one; a longer generation moves to a larger buffer (one copy and one capture). Without CUDA (or with
``graph=False``) the same step runs eagerly on the same buffers, which is how the CPU tests check it.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

from .fast_decode import FastDecoder


@dataclass
class _Slot:
    """The fixed tensors one graph reads and writes; each step only changes their contents."""

    token: torch.Tensor  # (B, 1) long: the token being fed
    position: torch.Tensor  # (1, 1) long: its position (RoPE)
    cache_position: torch.Tensor  # (1,) long: where its key and value are written
    allowed: torch.Tensor  # (B, 1, 1, capacity) bool: the keys each row may see
    keys: list[torch.Tensor]  # per layer (B, kv_heads, capacity, head_dim)
    values: list[torch.Tensor]
    logits: torch.Tensor | None = None  # (B, V): the graph's output
    graph: Any = None  # torch.cuda.CUDAGraph once captured

    @property
    def capacity(self) -> int:
        return self.allowed.shape[-1]


class StaticCacheDecoder:
    """Decode steps over a fixed-capacity cache; the same ``step(token, cache, attention_mask)`` as
    :class:`FastDecoder`, so it can stand in for it in ``continue_decoding``."""

    def __init__(
        self,
        model: PreTrainedModel,
        graph: bool | None = None,
        capacity_step: int = 256,
        reserve: int = 64,
        max_graphs: int = 8,
    ) -> None:
        self.fast = FastDecoder(model)  # the layout checks and the step's arithmetic
        self.device = model.device
        self.graph = self.device.type == "cuda" if graph is None else graph
        if self.graph and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the model is on {self.device}")
        if min(capacity_step, reserve, max_graphs) < 1:
            raise ValueError("capacity_step, reserve and max_graphs must be at least 1")
        self.capacity_step = capacity_step
        self.reserve = reserve
        self.max_graphs = max_graphs
        self._slots: OrderedDict[tuple[int, int, torch.dtype], _Slot] = OrderedDict()
        self._slot: _Slot | None = None
        self._source: weakref.ref[DynamicCache] | None = None
        self._next = 0  # the position the next fed token takes

    @torch.no_grad()
    def step(self, token: torch.Tensor, cache: DynamicCache, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, V) after feeding ``token`` (B, 1) that follows ``cache``'s sequence.

        The first step after a prefill (a cache this decoder has not seen) copies ``cache`` into the
        buffers; ``attention_mask`` (B, past + 1) marks real positions as for the reference step, and
        only its prompt part is read (a generated token is always real). ``cache`` itself does not grow.
        """
        if self._source is None or self._source() is not cache:
            prompt_mask = None if attention_mask is None else attention_mask[:, :-1]
            self.begin(cache, prompt_mask, self.reserve)
        slot = self._slot
        assert slot is not None
        if self._next >= slot.capacity:  # longer than foreseen: move to a larger buffer
            self._grow(slot)
            slot = self._slot
            assert slot is not None
        slot.token.copy_(token)
        slot.position.fill_(self._next)
        slot.cache_position.fill_(self._next)
        slot.allowed[:, :, :, self._next] = True
        if slot.graph is not None:
            slot.graph.replay()
        else:
            slot.logits = self._run(slot)
        self._next += 1
        assert slot.logits is not None
        return slot.logits.clone()  # the next replay overwrites the graph's output

    @torch.no_grad()
    def begin(self, cache: DynamicCache, attention_mask: torch.Tensor | None, new_tokens: int = 64) -> None:
        """Start decoding after ``cache`` (a prefilled ``DynamicCache``), with room for ``new_tokens``
        before a larger buffer is needed. ``attention_mask`` (B, past) marks the prompt's real positions."""
        layers = [cache.layers[layer.self_attn.layer_idx] for layer in self.fast.layers]
        first = layers[0].keys
        past = first.shape[-2]
        slot = self._slot_for(first, past + new_tokens)
        for layer, key_buffer, value_buffer in zip(layers, slot.keys, slot.values, strict=True):
            key_buffer[:, :, :past].copy_(layer.keys)
            value_buffer[:, :, :past].copy_(layer.values)
        slot.allowed.zero_()
        if attention_mask is None:
            slot.allowed[:, :, :, :past] = True
        else:
            slot.allowed[:, 0, 0, :past] = attention_mask.to(torch.bool)
        self._slot, self._source, self._next = slot, weakref.ref(cache), past

    def _slot_for(self, like: torch.Tensor, length: int) -> _Slot:
        """The slot for keys shaped like ``like`` (B, kv_heads, L, head_dim) with room for ``length``."""
        batch, heads, _, head_dim = like.shape
        capacity = -(-length // self.capacity_step) * self.capacity_step
        key = (batch, capacity, like.dtype)
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
            return slot
        while len(self._slots) >= self.max_graphs:
            self._slots.popitem(last=False)

        def buffers() -> list[torch.Tensor]:
            shape = (batch, heads, capacity, head_dim)
            return [torch.zeros(shape, dtype=like.dtype, device=self.device) for _ in self.fast.layers]

        slot = _Slot(
            token=torch.zeros((batch, 1), dtype=torch.long, device=self.device),
            position=torch.zeros((1, 1), dtype=torch.long, device=self.device),
            cache_position=torch.zeros((1,), dtype=torch.long, device=self.device),
            allowed=torch.zeros((batch, 1, 1, capacity), dtype=torch.bool, device=self.device),
            keys=buffers(),
            values=buffers(),
        )
        if self.graph:
            self._capture(slot)
        self._slots[key] = slot
        return slot

    def _grow(self, slot: _Slot) -> None:
        """Carry the sequence so far into a buffer with room for ``capacity_step`` more positions."""
        length = self._next
        larger = self._slot_for(slot.keys[0], length + self.capacity_step)
        for small, large in zip([*slot.keys, *slot.values], [*larger.keys, *larger.values], strict=True):
            large[:, :, :length].copy_(small[:, :, :length])
        larger.allowed.zero_()
        larger.allowed[..., :length] = slot.allowed[..., :length]
        self._slot = larger

    def _run(self, slot: _Slot) -> torch.Tensor:
        """One step on the slot's tensors: embedding, the decoder with in-place cache writes, logits."""
        embed = self.fast.text.embed_tokens
        hidden = F.embedding(slot.token, embed.weight, embed.padding_idx, embed.max_norm, embed.norm_type,
                             embed.scale_grad_by_freq, embed.sparse)  # fmt: skip
        logits, _, _ = self.fast._layers(
            hidden, slot.position, slot.allowed, slot.keys, slot.values, cache_position=slot.cache_position
        )
        return logits

    def _capture(self, slot: _Slot) -> None:
        """Record one step into a CUDA graph. The warm-up runs on a side stream (as torch requires) pick
        the kernels and allocate their workspaces; they write a key and value at position 0 of the fresh
        buffers, which ``begin`` overwrites with the prompt's before any replay."""
        slot.allowed[..., 0] = True  # no row without a key during the warm-up (its softmax would be 0/0)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._run(slot)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        slot.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(slot.graph):
            slot.logits = self._run(slot)
