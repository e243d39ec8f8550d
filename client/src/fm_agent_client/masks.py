"""The mask vocabulary, written once: what a caller asks of the attention, as text and on the wire.

A spec is a frozen dataclass, so many requests can share one without any of them mutating it
(per-request state lives in ``fm_agent.attention.context.FutureAttention``). This module imports
neither torch nor the model: the client, the server, the evaluation and the CLI all parse and print
masks here, so a label means the same thing from a controller's config file to the kernel.

Text form (``FutureMaskSpec.parse`` / ``FutureMaskSpec.label``)::

    causal                          the stock causal mask
    Mf | Mv2v | Mv2t                a future-aware mask, applied in prefill (= Mf/prefill)
    Mf/full                         ... and generated tokens stay visible to visual rows (no KV cache)
    Mf+merge                        merged into the sink key with the default options
    Mf+merge(op=mean,k=5,slots=2)   ... with explicit pooling op, kernel (= stride) and slots

``label`` prints the shortest form that parses back to the same spec, so defaults are omitted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

from .v1 import policy_pb2 as pb

MaskKind = Literal["causal", "Mf", "Mv2v", "Mv2t"]
DecodeMode = Literal["prefill", "full"]
PoolOp = Literal["max", "mean"]

MASK_KINDS: tuple[str, ...] = ("causal", "Mf", "Mv2v", "Mv2t")
DECODE_MODES: tuple[str, ...] = ("prefill", "full")
POOL_OPS: tuple[str, ...] = ("max", "mean")
MERGE_OPTION_KEYS: dict[str, str] = {"op": "op", "k": "kernel", "kernel": "kernel", "slots": "slots"}

_LABEL = re.compile(r"^(?P<kind>[A-Za-z0-9]+)(?:/(?P<mode>[a-z]+))?(?P<merge>\+merge(?:\((?P<options>[^()]*)\))?)?$")


@dataclass(frozen=True)
class MergeOptions:
    """The paper's "light" variant: pooled future scores added to the first prefix keys.

    ``op`` pools along the key axis with a 1-D kernel of size ``kernel`` and stride ``kernel``;
    the pooled sequence is reduced into ``slots`` contiguous chunks whose values are added to the
    logits of the first ``slots`` (non-padding) keys. Defaults follow the paper's ablations.
    """

    op: PoolOp = "max"
    kernel: int = 3
    slots: int = 1

    def __post_init__(self) -> None:
        if self.op not in POOL_OPS:
            raise ValueError(f"merge op must be one of {POOL_OPS}, got {self.op!r}")
        if not isinstance(self.kernel, int) or isinstance(self.kernel, bool) or self.kernel < 1:
            raise ValueError(f"merge kernel must be a positive integer, got {self.kernel!r}")
        if not isinstance(self.slots, int) or isinstance(self.slots, bool) or self.slots < 1:
            raise ValueError(f"merge slots must be a positive integer, got {self.slots!r}")

    @property
    def text(self) -> str:
        """``(op=..,k=..,slots=..)`` with only the options that differ from the defaults; '' for defaults."""
        parts = [
            f"{key}={value}"
            for key, value, default in (("op", self.op, "max"), ("k", self.kernel, 3), ("slots", self.slots, 1))
            if value != default
        ]
        return f"({','.join(parts)})" if parts else ""

    @classmethod
    def parse(cls, text: str) -> MergeOptions:
        """``op=mean,k=5,slots=2`` (any subset, any order; ``kernel`` is accepted for ``k``)."""
        values: dict[str, str | int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            field = MERGE_OPTION_KEYS.get(key.strip())
            if not sep or field is None:
                raise ValueError(f"merge option {item!r} is not one of op=, k=, slots=")
            if field in values:
                raise ValueError(f"merge option {key.strip()!r} is given twice")
            value = value.strip()
            if field == "op":
                values[field] = value
            else:
                try:
                    values[field] = int(value)
                except ValueError:
                    raise ValueError(f"merge option {key.strip()}={value!r} is not an integer") from None
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FutureMaskSpec:
    """Which future a visual query may see, and how that future is used.

    ``decode_mode`` only matters for unmerged, non-causal masks: ``prefill`` applies the mask in
    the prompt pass and decodes with the ordinary cache (generated tokens stay invisible to visual
    rows); ``full`` lets visual rows keep seeing every later token, generated ones included, which
    forces a cache-free recomputation per generated token (what the paper timed).
    """

    mask: MaskKind = "causal"
    merge: MergeOptions | None = None
    decode_mode: DecodeMode = "prefill"

    def __post_init__(self) -> None:
        if self.mask not in MASK_KINDS:
            raise ValueError(f"unknown mask {self.mask!r}; expected one of {MASK_KINDS}")
        if self.decode_mode not in DECODE_MODES:
            raise ValueError(f"unknown decode mode {self.decode_mode!r}; expected one of {DECODE_MODES}")
        if self.merge is not None and not isinstance(self.merge, MergeOptions):
            raise TypeError("merge must be a MergeOptions instance or None")

    @property
    def is_causal(self) -> bool:
        """True when the attention is exactly the stock causal one (merge of nothing is nothing)."""
        return self.mask == "causal"

    @property
    def needs_full_recompute(self) -> bool:
        """True when generated tokens change earlier visual rows, so a KV cache cannot be reused."""
        return not self.is_causal and self.merge is None and self.decode_mode == "full"

    @property
    def label(self) -> str:
        """The shortest text that parses back to this spec, e.g. ``Mf+merge``, ``Mv2t/full`` or
        ``Mf+merge(op=mean,k=5)``: stable names for tables, plots, files and flags."""
        if self.is_causal:
            return "causal"
        if self.merge is not None:
            return f"{self.mask}+merge{self.merge.text}"
        return f"{self.mask}/{self.decode_mode}"

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, text: str, merge_options: MergeOptions | None = None) -> FutureMaskSpec:
        """Parse labels such as ``causal``, ``Mf``, ``Mv2v/full``, ``Mv2t+merge`` or
        ``Mf+merge(op=max,k=3,slots=1)``; ``merge_options`` fills a bare ``+merge``."""
        match = _LABEL.match(text.strip())
        if match is None:
            raise ValueError(
                f"cannot read mask {text!r}: expected KIND, KIND/MODE or KIND+merge[(op=..,k=..,slots=..)] "
                f"with KIND one of {MASK_KINDS} and MODE one of {DECODE_MODES}"
            )
        if match["merge"] and match["mode"]:
            raise ValueError(f"mask {text!r}: a merged mask keeps the KV cache, so it takes no /{match['mode']}")
        merge = None
        if match["merge"]:
            merge = MergeOptions.parse(match["options"]) if match["options"] else (merge_options or MergeOptions())
        return cls(mask=match["kind"], merge=merge, decode_mode=match["mode"] or "prefill")  # type: ignore[arg-type]

    def to_message(self) -> pb.MaskOptions:
        """The wire form (``fm_agent.v1.MaskOptions``)."""
        message = pb.MaskOptions(mask=self.mask, merge=self.merge is not None, decode_mode=self.decode_mode)
        if self.merge is not None:
            message.merge_op, message.merge_kernel, message.merge_slots = (
                self.merge.op,
                self.merge.kernel,
                self.merge.slots,
            )
        return message

    @classmethod
    def from_message(cls, options: pb.MaskOptions, default: FutureMaskSpec) -> FutureMaskSpec:
        """The spec a ``MaskOptions`` asks for; unset fields take the documented defaults and an empty
        message means ``default``. Raises ``ValueError`` for values outside the vocabulary."""
        if not options.mask and not options.merge and not options.decode_mode:
            return default
        merge = None
        if options.merge:  # the values are checked in __post_init__; cast() only tells the type checker
            merge = MergeOptions(
                op=cast(PoolOp, options.merge_op or "max"),
                kernel=options.merge_kernel or 3,
                slots=options.merge_slots or 1,
            )
        return cls(
            mask=cast(MaskKind, options.mask or "causal"),
            merge=merge,
            decode_mode=cast(DecodeMode, options.decode_mode or "prefill"),
        )


CAUSAL = FutureMaskSpec()
DEFAULT_MERGE = MergeOptions()
ALL_SPEC_LABELS: tuple[str, ...] = tuple(
    ["causal"]
    + [f"{m}/{mode}" for m in MASK_KINDS[1:] for mode in DECODE_MODES]
    + [f"{m}+merge" for m in MASK_KINDS[1:]]
)
"""Every mask family x decode mode with default merge options: the sweep a mask study runs."""
