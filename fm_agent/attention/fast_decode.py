"""One cached decode step of a Llama decoder (alone or in a LLaVA-family model), without the module stack.

Why: a decode step of a small policy is dominated by Python, not arithmetic. The shipped LIBERO
policy spends about 2 ms per token, of which about a third is matrix products; the rest is
``nn.Module.__call__``, transformers' output-capturing wrappers and config lookups, repeated for
4 layers x 9 modules x 27 tokens per control step. This step runs the *same* torch operations on
the *same* weight tensors in the same order as ``LlavaForConditionalGeneration.forward`` does for
one new token with a cache (embedding, RMSNorm, q/k/v projections, RoPE, cache update, SDPA with
the mask transformers itself builds, output projection, gated MLP, final norm, LM head), so its
logits are the reference path's, bit for bit (tested for every mask, padded batches and sampling).

It applies only where the reference decode step is the stock causal one: a generated token is
text, so no future-aware plan exists for it (``FutureAttention`` returns none), except in ``full``
decode mode, which recomputes without a cache and keeps the reference path. ``supports`` says
whether a model has the layout this step knows; anything else keeps the reference path too.

``compile=True`` hands the same step, from the embeddings to the logits, to ``torch.compile``
(inductor with frozen weights and a C++ wrapper, dynamic sequence length). That removes much of the
remaining per-op overhead (decoding 1.4-1.5x faster on a quiet 2-core CPU, about 3x while simulators
load the cores, docs/latency.md) at the price of exactness: inductor
fuses and reorders the element-wise and reduction arithmetic, so the logits differ from the
reference in the last bits (about 1e-5 here) and a greedy token can only change where two action
tokens tie to that precision. It is therefore an option, not the default. Dynamo compiles four
times: for batch 1, for the first unpadded batch of several, for the first padded one and for a
padded one of another size (after which the batch is dynamic). Checkpoint validation at load runs
all four (``checkpoint.COMPILE_WARM_UP``), 10-60 s each, so no client's request ever waits for a
compile. Weights are frozen into the compiled code, so it is for serving, not training.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import LlamaModel, LlamaRMSNorm, apply_rotary_pos_emb

from .interface import SDPA_IMPLEMENTATION


class CachedDecodeStep(Protocol):
    """What ``continue_decoding`` needs of a stand-in for transformers' cached decode step:
    :class:`FastDecoder` and ``static_decode.StaticCacheDecoder``."""

    def step(self, token: torch.Tensor, cache: DynamicCache, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, V) after feeding ``token`` (B, 1) that follows ``cache``'s sequence."""
        ...


def text_model(model: Any) -> Any:
    """The decoder stack of a causal LM (``LlamaForCausalLM.model``) or of a LLaVA-family VLM
    (``model.model.language_model``); None for anything else."""
    inner = getattr(model, "model", None)
    if isinstance(inner, LlamaModel):
        return inner
    return getattr(inner, "language_model", None)


def _rms_norm(norm: LlamaRMSNorm, hidden: torch.Tensor) -> torch.Tensor:
    """``LlamaRMSNorm.forward``, op for op."""
    dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * hidden.to(dtype)


class FastDecoder:
    """The decode step for one loaded model; build once (it holds references to the model's modules)."""

    def __init__(self, model: PreTrainedModel, compile: bool = False) -> None:
        if not self.supports(model):
            raise ValueError(f"{type(model).__name__} has no Llama text model under SDPA; use the reference decode")
        self.model = model
        self.text: LlamaModel = text_model(model)
        self.lm_head: torch.nn.Linear = model.lm_head
        self.layers = list(self.text.layers)
        self.compiled = compile
        self._body = (
            torch.compile(self._layers, dynamic=True, options={"freezing": True, "cpp_wrapper": True})
            if compile
            else self._layers
        )

    @staticmethod
    def supports(model: Any) -> bool:
        text = text_model(model)
        return (
            isinstance(text, LlamaModel)
            and isinstance(getattr(model, "lm_head", None), torch.nn.Linear)
            and text.config._attn_implementation == SDPA_IMPLEMENTATION
            and getattr(text.config, "sliding_window", None) is None
            and not model.training
        )

    @torch.no_grad()
    def step(self, token: torch.Tensor, cache: DynamicCache, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, V) after appending ``token`` (B, 1) to the cached sequence; the cache grows by one.

        ``attention_mask`` (B, past + 1) marks the real (non-padding) positions, as for the reference step.
        """
        text = self.text
        embed = text.embed_tokens
        hidden = F.embedding(token, embed.weight, embed.padding_idx, embed.max_norm, embed.norm_type,
                             embed.scale_grad_by_freq, embed.sparse)  # fmt: skip
        past = cache.get_seq_length()
        position_ids = (torch.arange(token.shape[1], device=token.device) + past).unsqueeze(0)
        mask = create_causal_mask(
            config=text.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=position_ids,
        )
        assert mask is None or isinstance(mask, torch.Tensor)  # SDPA masks are tensors (no flex BlockMask)
        layers = [cache.layers[layer.self_attn.layer_idx] for layer in self.layers]
        logits, keys, values = self._body(
            hidden, position_ids, mask, [layer.keys for layer in layers], [layer.values for layer in layers]
        )
        for layer, key, value in zip(layers, keys, values, strict=True):  # DynamicLayer.update's torch.cat, done
            layer.keys, layer.values = key, value
        return logits

    def _layers(
        self,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor | None,
        past_keys: list[torch.Tensor],
        past_values: list[torch.Tensor],
        cache_position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The decoder on plain tensors (so ``torch.compile`` sees no cache object): logits, and each
        layer's keys and values with the new position appended.

        With ``cache_position`` the past tensors are fixed-capacity buffers (``static_decode``): the new
        keys and values are written into them in place at that position and attention reads the whole
        buffer, the mask hiding what is not yet written."""
        text = self.text
        cos, sin = text.rotary_emb(hidden, position_ids=position_ids)
        batch, length = hidden.shape[:2]
        keys, values = [], []
        for layer, past_key, past_value in zip(self.layers, past_keys, past_values, strict=True):
            attention, mlp = layer.self_attn, layer.mlp
            residual = hidden
            hidden = _rms_norm(layer.input_layernorm, hidden)
            shape = (batch, length, -1, attention.head_dim)
            query = F.linear(hidden, attention.q_proj.weight, attention.q_proj.bias).view(shape).transpose(1, 2)
            key = F.linear(hidden, attention.k_proj.weight, attention.k_proj.bias).view(shape).transpose(1, 2)
            value = F.linear(hidden, attention.v_proj.weight, attention.v_proj.bias).view(shape).transpose(1, 2)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            if cache_position is None:
                key, value = torch.cat([past_key, key], dim=-2), torch.cat([past_value, value], dim=-2)
            else:
                key = past_key.index_copy_(-2, cache_position, key)
                value = past_value.index_copy_(-2, cache_position, value)
            keys.append(key)
            values.append(value)
            output, _ = sdpa_attention_forward(attention, query, key, value, mask, dropout=0.0,
                                               scaling=attention.scaling)  # fmt: skip
            output = output.reshape(batch, length, -1).contiguous()
            hidden = residual + F.linear(output, attention.o_proj.weight, attention.o_proj.bias)
            residual = hidden
            hidden = _rms_norm(layer.post_attention_layernorm, hidden)
            gate = F.linear(hidden, mlp.gate_proj.weight, mlp.gate_proj.bias)
            up = F.linear(hidden, mlp.up_proj.weight, mlp.up_proj.bias)
            hidden = residual + F.linear(mlp.act_fn(gate) * up, mlp.down_proj.weight, mlp.down_proj.bias)
        hidden = _rms_norm(text.norm, hidden)
        return F.linear(hidden, self.lm_head.weight, self.lm_head.bias)[:, -1], keys, values
