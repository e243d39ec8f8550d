"""Prefill and decode latency per mask on a Llama-shaped decoder (or any causal LM).

Every configuration runs once per repetition, repetitions interleaved (A B C A B C ...) so a
noisy neighbour slows all of them alike; the report gives medians and inter-quartile spread,
and ratios are only formed between numbers of the same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, TypeVar

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from ..attention import FutureAttention, FutureMaskSpec, enable_future_attention
from ..attention.static_decode import StaticCacheDecoder
from .config import PROFILE_SPECS
from .layouts import vla_layout

T = TypeVar("T")


@dataclass
class DecoderShape:
    """The Llama-shaped decoder that is timed (random weights: latency does not depend on them)."""

    hidden: int = 512
    layers: int = 8
    heads: int = 8
    kv_heads: int = 8
    intermediate: int = 1376
    vocab: int = 32000

    def build(self, dtype: torch.dtype, device: str = "cpu") -> LlamaForCausalLM:
        """Initialised directly on ``device`` in ``dtype``: a 7B shape built in fp32 on the host first would
        need 27 GB of host memory and minutes of CPU initialisation before it reached a GPU."""
        config = LlamaConfig(  # type: ignore[call-arg]
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=8192,
            attn_implementation="sdpa",
        )
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = LlamaForCausalLM(config).eval()
        finally:
            torch.set_default_dtype(previous)
        enable_future_attention(model)
        return model


@dataclass
class ProfileSettings:
    contexts: tuple[int, ...] = (256, 1024, 2048)
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    specs: tuple[str, ...] = PROFILE_SPECS
    repetitions: int = 3
    decode_tokens: int = 8
    full_decode_tokens: int = 2
    frame_tokens: int = 64
    threads: int = 1
    device: str = "cpu"
    shape: DecoderShape = field(default_factory=DecoderShape)
    static_decode: bool = False  # also time cached decoding on a static cache (a CUDA graph on a GPU)


@dataclass
class Sample:
    dtype: str
    context: int
    spec: str
    prefill_ms: list[float] = field(default_factory=list)
    decode_ms_per_token: list[float] = field(default_factory=list)
    mask_build_ms: list[float] = field(default_factory=list)
    static_decode_ms_per_token: list[float] = field(default_factory=list)
    static_begin_ms: list[float] = field(default_factory=list)
    static_tokens_match: list[bool] = field(default_factory=list)


class Measurement(NamedTuple):
    """One repetition of one configuration (milliseconds)."""

    prefill_ms: float
    decode_ms_per_token: float
    mask_build_ms: float
    static_decode_ms_per_token: float | None = None  # with a static decoder, on cached masks only
    static_begin_ms: float | None = None  # copying the prefill's cache into the static buffers
    static_tokens_match: bool | None = None  # did it choose the reference path's greedy tokens?


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work: CUDA kernels run asynchronously, so a host clock read right after a
    launch would time the launch, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """``fn()`` and the milliseconds it took on ``device``."""
    _synchronize(device)
    start = time.perf_counter()
    result = fn()
    _synchronize(device)
    return result, (time.perf_counter() - start) * 1e3


@torch.no_grad()
def measure_once(
    model: LlamaForCausalLM,
    spec: FutureMaskSpec,
    visual: torch.Tensor,
    decode_tokens: int,
    full_decode_tokens: int,
    static: StaticCacheDecoder | None = None,
) -> Measurement:
    """One prefill, its decode steps and the mask build.

    With ``static`` (and a cached mask) the same greedy tokens are first decoded on the static decoder
    from the same prefill, which leaves the prefill's cache as it was, then on the reference path.
    """
    device = model.device
    input_ids = torch.randint(3, model.config.vocab_size, (1, visual.shape[0]), device=device)
    context = FutureAttention(spec, visual[None]) if not spec.is_causal else None
    build_ms = 0.0
    if context is not None:  # the per-request mask work, on a throw-away context of the same request
        probe = FutureAttention(spec, visual[None])
        _, build_ms = _timed(lambda: probe.plan(None, 1, visual.shape[0], visual.shape[0], device), device)
    use_cache = not spec.needs_full_recompute
    cache = DynamicCache(config=model.config) if use_cache else None
    kwargs = {"future_attention": context} if context is not None else {}
    out, prefill_ms = _timed(
        lambda: model(input_ids=input_ids, past_key_values=cache, use_cache=use_cache, logits_to_keep=1, **kwargs),
        device,
    )
    static_result: tuple[float, float, list[torch.Tensor]] | None = None
    if static is not None and cache is not None:
        static_result = _static_decode(static, cache, out.logits[:, -1:].argmax(-1), decode_tokens, device)
    sequence = input_ids
    steps = decode_tokens if use_cache else full_decode_tokens
    decode_total = 0.0
    chosen = []
    for _ in range(steps):
        next_id = out.logits[:, -1:].argmax(-1)
        chosen.append(next_id)
        sequence = torch.cat([sequence, next_id], dim=-1)
        if use_cache:
            step = lambda: model(input_ids=next_id, past_key_values=cache, use_cache=True, logits_to_keep=1, **kwargs)
        else:
            step = lambda: model(input_ids=sequence, use_cache=False, logits_to_keep=1, **kwargs)
        out, ms = _timed(step, device)
        decode_total += ms
    decode_ms = decode_total / max(steps, 1)
    if static_result is None:
        return Measurement(prefill_ms, decode_ms, build_ms)
    begin_ms, static_ms, static_chosen = static_result
    match = torch.equal(torch.cat(static_chosen, -1), torch.cat(chosen, -1))
    return Measurement(prefill_ms, decode_ms, build_ms, static_ms, begin_ms, match)


def _static_decode(
    static: StaticCacheDecoder, cache: DynamicCache, first: torch.Tensor, tokens: int, device: torch.device
) -> tuple[float, float, list[torch.Tensor]]:
    """Greedy decoding on ``static`` from a prefilled ``cache``: (begin ms, ms per token, the tokens fed)."""
    _, begin_ms = _timed(lambda: static.begin(cache, None, tokens), device)
    token, chosen, total = first, [], 0.0
    for _ in range(tokens):
        chosen.append(token)
        logits, ms = _timed(lambda: static.step(token, cache, None), device)
        total += ms
        token = logits.argmax(-1, keepdim=True)
    return begin_ms, total / max(tokens, 1), chosen


def run_profile(settings: ProfileSettings, progress: Callable[[Iterable], Iterable] = lambda x: x) -> list[Sample]:
    """All (dtype, context, spec) samples, repetitions interleaved."""
    torch.set_num_threads(settings.threads)
    samples: dict[tuple[str, int, str], Sample] = {}
    plan = [
        (rep, dtype, context, label)
        for rep in range(settings.repetitions + 1)
        for dtype in settings.dtypes
        for context in settings.contexts
        for label in settings.specs
    ]
    models = {dtype: settings.shape.build(getattr(torch, dtype), settings.device) for dtype in settings.dtypes}
    # One static decoder per model: its buffers (and graphs) per context are built in the warm-up round.
    static = {dtype: StaticCacheDecoder(model) for dtype, model in models.items()} if settings.static_decode else {}
    layouts = {context: vla_layout(context, settings.frame_tokens) for context in settings.contexts}
    for rep, dtype, context, label in progress(plan):
        spec = FutureMaskSpec.parse(label)
        result = measure_once(
            models[dtype], spec, layouts[context], settings.decode_tokens, settings.full_decode_tokens,
            static.get(dtype),
        )  # fmt: skip
        if rep == 0:
            continue  # warm-up round: first-touch allocations, kernel selection, graph capture
        sample = samples.setdefault((dtype, context, label), Sample(dtype, context, label))
        sample.prefill_ms.append(result.prefill_ms)
        sample.decode_ms_per_token.append(result.decode_ms_per_token)
        sample.mask_build_ms.append(result.mask_build_ms)
        if result.static_decode_ms_per_token is not None:
            sample.static_decode_ms_per_token.append(result.static_decode_ms_per_token)
            sample.static_begin_ms.append(result.static_begin_ms or 0.0)
            sample.static_tokens_match.append(bool(result.static_tokens_match))
    return list(samples.values())


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def summarise(samples: list[Sample]) -> list[dict]:
    """Medians, quartiles and ratios to the causal baseline of the same dtype and context."""
    rows = []
    baseline = {(s.dtype, s.context): s for s in samples if s.spec == "causal"}
    merged_decode = {(s.dtype, s.context, s.spec.split("+")[0]): s for s in samples if s.spec.endswith("+merge")}
    for s in samples:
        prefill, decode, build = (_quartiles(v) for v in (s.prefill_ms, s.decode_ms_per_token, s.mask_build_ms))
        row = {
            "dtype": s.dtype,
            "context": s.context,
            "spec": s.spec,
            "prefill_ms": prefill[1],
            "prefill_ms_iqr": [prefill[0], prefill[2]],
            "decode_ms_per_token": decode[1],
            "decode_ms_per_token_iqr": [decode[0], decode[2]],
            "mask_build_ms": build[1],
            "mask_build_fraction_of_prefill": build[1] / prefill[1],
        }
        base = baseline.get((s.dtype, s.context))
        if base is not None:
            row["prefill_ratio_to_causal"] = prefill[1] / statistics.median(base.prefill_ms)
            row["decode_ratio_to_causal"] = decode[1] / statistics.median(base.decode_ms_per_token)
        if s.static_decode_ms_per_token:
            static = _quartiles(s.static_decode_ms_per_token)
            row["static_decode_ms_per_token"] = static[1]
            row["static_decode_ms_per_token_iqr"] = [static[0], static[2]]
            row["static_decode_speedup"] = decode[1] / static[1]  # reference path / static path
            row["static_begin_ms"] = statistics.median(s.static_begin_ms)
            row["static_tokens_match"] = all(s.static_tokens_match)
        merged = merged_decode.get((s.dtype, s.context, s.spec.split("/")[0]))
        if s.spec.endswith("/full") and merged is not None:
            row["full_decode_ratio_to_merge"] = decode[1] / statistics.median(merged.decode_ms_per_token)
        rows.append(row)
    return rows


def settings_dict(settings: ProfileSettings) -> dict:
    return asdict(settings)
