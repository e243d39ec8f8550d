"""Actions as tokens: continuous dimensions binned, discrete actions as one token each.

Token ``k`` of the action vocabulary is text-tokenizer id ``offset + k`` (``convention`` "fm_agent":
reserved ``<a0>``, ``<a1>``, ... tokens) or ``offset - k`` ("openvla": OpenVLA's layout, bins on the
last vocabulary ids with bin 0 on the last one, ``offset = vocab_size - 1``). Continuous actions are
normalised per dimension to [-1, 1] with statistics stored next to the weights (low/high are
the 1st/99th percentiles of the training actions, as OpenVLA does, so outliers do not waste bins),
then cut into ``bins`` equal bins; decoding returns bin centres.

``encoding = "fast"`` (continuous actions only) replaces the per-dimension bins by FAST
(``fast_actions.py``): the normalised chunk goes through a DCT over time, rounding and BPE, so a chunk
is a variable number of tokens (at most ``chunk x dims``) from a vocabulary of ``bins`` BPE tokens;
``fast`` holds the DCT scale and the fitted BPE. Decoding must then run under a
:class:`~fm_agent.model.fast_actions.LengthConstraint` (``length_constraint``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .fast_actions import FastCodec, LengthConstraint

CONVENTIONS = ("fm_agent", "openvla")
ENCODINGS = ("bins", "fast")


def quantile_range(samples: np.ndarray, quantile: float = 0.01) -> tuple[list[float], list[float]]:
    """Per-dimension 1st / 99th percentiles of (N, D) samples: the range actions and proprio are binned
    over, so outliers do not waste bins."""
    samples = np.asarray(samples, dtype=np.float64)
    return np.quantile(samples, quantile, axis=0).tolist(), np.quantile(samples, 1 - quantile, axis=0).tolist()


@dataclass
class ActionTokenizer:
    kind: str  # "continuous" | "discrete"
    dims: int  # action dimensions (1 for discrete)
    bins: int  # tokens per dimension (continuous) or number of actions (discrete)
    offset: int = 0  # id of action token 0 in the text vocabulary
    chunk: int = 1  # actions predicted per call
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    clip_low: list[float] = field(default_factory=list)  # the env's action bounds, applied after decoding
    clip_high: list[float] = field(default_factory=list)
    convention: str = "fm_agent"  # or "openvla": id = offset - k
    encoding: str = "bins"  # or "fast": DCT + BPE, variable length (continuous only)
    fast: dict = field(default_factory=dict)  # encoding "fast": {"scale": float, "bpe": tokenizers JSON}

    def __post_init__(self) -> None:
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        if self.kind not in ("continuous", "discrete"):
            raise ValueError(f"kind must be 'continuous' or 'discrete', got {self.kind!r}")
        if self.kind == "discrete" and self.dims != 1:
            raise ValueError("discrete actions have one dimension")
        if self.kind == "continuous" and not (len(self.low) == len(self.high) == self.dims):
            raise ValueError(f"continuous actions need low/high statistics for each of {self.dims} dims")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        self._codec: FastCodec | None = None
        if self.encoding == "fast":
            if self.kind != "continuous" or self.convention != "fm_agent":
                raise ValueError("the FAST encoding is for continuous actions with the fm_agent id convention")
            try:
                self._codec = FastCodec(self.chunk, self.dims, float(self.fast["scale"]), self.fast["bpe"])
            except Exception as error:  # a missing key, or the JSON tokenizers cannot read (a bare Exception)
                raise ValueError(f"fast: needs 'scale' and a valid 'bpe' tokenizer ({error})") from error
            if self._codec.vocab_size != self.bins:
                raise ValueError(f"fast: the BPE has {self._codec.vocab_size} tokens, bins says {self.bins}")

    @classmethod
    def fit(
        cls,
        actions: np.ndarray,
        bins: int = 256,
        chunk: int = 1,
        clip: tuple[float, float] = (-1.0, 1.0),
        quantile: float = 0.01,
    ) -> ActionTokenizer:
        """Statistics from training actions (N, D)."""
        actions = np.asarray(actions, dtype=np.float64)
        low, high = (np.asarray(side) for side in quantile_range(actions, quantile))
        high = np.where(high - low < 1e-6, low + 1e-6, high)  # constant dimensions still get a valid range
        dims = actions.shape[1]
        return cls(
            "continuous",
            dims,
            bins,
            chunk=chunk,
            low=low.tolist(),
            high=high.tolist(),
            clip_low=[clip[0]] * dims,
            clip_high=[clip[1]] * dims,
        )

    @classmethod
    def fit_fast(
        cls,
        actions: np.ndarray,
        chunks: np.ndarray,
        scale: float = 10.0,
        vocab: int = 1024,
        clip: tuple[float, float] = (-1.0, 1.0),
        quantile: float = 0.01,
    ) -> ActionTokenizer:
        """FAST: normalisation statistics from the training actions (N, D), BPE from the training
        chunks (M, chunk, D), the action chunks the policy is trained to emit."""
        binned = cls.fit(actions, chunk=chunks.shape[1], clip=clip, quantile=quantile)
        codec = FastCodec.fit(binned.normalise(chunks), scale, vocab)
        fast = {"scale": scale, "bpe": codec.bpe}
        return cls(**{**binned.to_dict(), "bins": codec.vocab_size, "encoding": "fast", "fast": fast})

    @classmethod
    def discrete(cls, num_actions: int, chunk: int = 1) -> ActionTokenizer:
        return cls("discrete", 1, num_actions, chunk=chunk)

    @property
    def tokens_per_action(self) -> int:
        return self.dims if self.kind == "continuous" else 1

    @property
    def tokens_per_call(self) -> int:
        """Tokens one call decodes: exactly, or at most for the FAST encoding."""
        return self.tokens_per_action * self.chunk

    @property
    def variable_length(self) -> bool:
        return self._codec is not None

    def length_constraint(self, batch: int) -> LengthConstraint:
        """The decoding constraint of the FAST encoding, for ``batch`` rows."""
        if self._codec is None:
            raise ValueError("only the FAST encoding decodes a variable number of tokens")
        return LengthConstraint(self._codec.token_lengths, batch, self._codec.coefficients_per_chunk)

    @property
    def vocab_size(self) -> int:
        return self.bins

    def token_range(self) -> tuple[int, int]:
        """[start, stop) of valid action token ids: constrained decoding keeps logits in here."""
        if self.convention == "openvla":
            return self.offset - self.bins + 1, self.offset + 1
        return self.offset, self.offset + self.bins

    def _ids(self, bins: np.ndarray) -> np.ndarray:
        return self.offset - bins if self.convention == "openvla" else bins + self.offset

    def _bins(self, ids: np.ndarray) -> np.ndarray:
        return self.offset - ids if self.convention == "openvla" else ids - self.offset

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """(C, D) floats or (C,) ints -> (C * tokens_per_action,) token ids."""
        actions = np.asarray(actions)
        if self.kind == "discrete":
            ids = actions.astype(np.int64).reshape(-1)
            if ids.min(initial=0) < 0 or ids.max(initial=0) >= self.bins:
                raise ValueError(f"discrete action out of range [0, {self.bins})")
            return self._ids(ids)
        unit = self.normalise(actions).reshape(-1, self.dims)
        if self._codec is not None:
            return self._codec.encode(unit) + self.offset
        ids = np.minimum(np.floor((unit + 1) / 2 * self.bins), self.bins - 1).astype(np.int64)
        return self._ids(ids.reshape(-1))

    def normalise(self, actions: np.ndarray) -> np.ndarray:
        """Continuous actions (..., D) -> [-1, 1] per dimension over the low/high statistics."""
        low, high = np.asarray(self.low), np.asarray(self.high)
        return np.clip(2 * (np.asarray(actions, dtype=np.float64) - low) / (high - low) - 1, -1, 1)

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Token ids -> (C, D) float32 (continuous) or (C,) int64 (discrete)."""
        ids = self._bins(np.asarray(ids, dtype=np.int64).reshape(-1))
        if ids.min(initial=0) < 0 or ids.max(initial=0) >= self.bins:
            raise ValueError("token ids outside the action vocabulary")
        if self.kind == "discrete":
            return ids
        if self._codec is not None:
            unit = np.clip(self._codec.decode(ids), -1, 1)
        else:
            unit = (ids.reshape(-1, self.dims) + 0.5) / self.bins * 2 - 1
        low, high = np.asarray(self.low), np.asarray(self.high)
        actions = (unit + 1) / 2 * (high - low) + low
        return np.clip(actions, self.clip_low, self.clip_high).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)  # dataclass fields only (not the codec built from them)

    @classmethod
    def from_dict(cls, data: dict) -> ActionTokenizer:
        return cls(**data)
