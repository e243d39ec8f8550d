"""What a caller asks of the attention: the mask family, merge options and decode mode.

Specs are frozen dataclasses so one can be shared by many requests without any of them
mutating it; per-request state lives in :class:`fm_agent.attention.context.FutureAttention`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MaskKind = Literal["causal", "Mf", "Mv2v", "Mv2t"]
DecodeMode = Literal["prefill", "full"]
PoolOp = Literal["max", "mean"]

MASK_KINDS: tuple[str, ...] = ("causal", "Mf", "Mv2v", "Mv2t")
DECODE_MODES: tuple[str, ...] = ("prefill", "full")
POOL_OPS: tuple[str, ...] = ("max", "mean")


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
        if not isinstance(self.kernel, int) or self.kernel < 1:
            raise ValueError(f"merge kernel must be a positive integer, got {self.kernel!r}")
        if not isinstance(self.slots, int) or self.slots < 1:
            raise ValueError(f"merge slots must be a positive integer, got {self.slots!r}")


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
        """A short, stable name for tables and plots, e.g. ``Mf+merge`` or ``Mv2t/full``."""
        if self.is_causal:
            return "causal"
        if self.merge is not None:
            return f"{self.mask}+merge"
        return f"{self.mask}/{self.decode_mode}"

    @classmethod
    def parse(cls, text: str, merge_options: MergeOptions | None = None) -> "FutureMaskSpec":
        """Parse labels such as ``causal``, ``Mf``, ``Mv2v/full`` or ``Mv2t+merge``."""
        name, merge, mode = text.strip(), None, "prefill"
        if name.endswith("+merge"):
            name, merge = name[: -len("+merge")], merge_options or MergeOptions()
        elif "/" in name:
            name, mode = name.split("/", 1)
        return cls(mask=name, merge=merge, decode_mode=mode)  # type: ignore[arg-type]


CAUSAL = FutureMaskSpec()
DEFAULT_MERGE = MergeOptions()
ALL_SPEC_LABELS: tuple[str, ...] = tuple(
    ["causal"]
    + [f"{m}/{mode}" for m in MASK_KINDS[1:] for mode in DECODE_MODES]
    + [f"{m}+merge" for m in MASK_KINDS[1:]]
)
