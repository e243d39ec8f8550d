"""FAST action chunks (pi0-FAST, NORA): a DCT over time, rounding, then byte-pair encoding.

Why: binning spends one decoded token per dimension per action (28 for LIBERO's 4 x 7 chunk), and
decoding is most of a control step. A chunk of smooth motion is nearly all low frequencies: after a
per-dimension DCT over the chunk most coefficients round to 0, and BPE fitted on the demonstrations
merges the frequent runs into single tokens (3.3 tokens per chunk-4 LIBERO chunk on held-out
episodes, ``docs/results/fast_tokens.json``).

The coefficients of a chunk, lowest frequency first across dimensions, become one string of
characters, one per rounded coefficient; BPE (``tokenizers``, no pre-tokenizer, so merges may span
dimensions) splits it into tokens. Every coefficient value a chunk can produce is in the base alphabet
(an orthonormal DCT of values in [-1, 1] over C steps stays within sqrt(C)), so any chunk encodes
and every token sequence whose characters add up to ``chunk x dims`` decodes: that length is the
whole validity rule, and :class:`LengthConstraint` enforces it while decoding. No end token is
needed, since decoding stops when the characters are complete.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import torch
from tokenizers import Tokenizer, models, trainers

FIRST_CHAR = 0x100  # coefficient q is the character FIRST_CHAR + q + limit: printable, never whitespace


def dct_matrix(length: int) -> np.ndarray:
    """The orthonormal DCT-II as a (length, length) matrix: ``coefficients = M @ signal``, ``signal = M.T @ c``."""
    n = np.arange(length)
    matrix = np.cos(np.pi * (n[None, :] + 0.5) * n[:, None] / length) * math.sqrt(2 / length)
    matrix[0] /= math.sqrt(2)
    return matrix


def coefficient_limit(chunk: int, scale: float) -> int:
    """The largest |rounded coefficient| a chunk of values in [-1, 1] can give."""
    return math.ceil(scale * math.sqrt(chunk))


def quantise(unit: np.ndarray, scale: float, dct: np.ndarray) -> np.ndarray:
    """(C, D) values in [-1, 1] -> (C * D,) rounded DCT coefficients, lowest frequency first
    (``dct``: ``dct_matrix(C)``, built once by the caller)."""
    limit = coefficient_limit(len(dct), scale)
    coefficients = dct @ np.clip(np.asarray(unit, dtype=np.float64), -1, 1)
    return np.clip(np.rint(coefficients * scale), -limit, limit).astype(np.int64).reshape(-1)


def as_text(quantised: np.ndarray, limit: int) -> str:
    return "".join(chr(FIRST_CHAR + int(q) + limit) for q in quantised)


class FastCodec:
    """Normalised (C, D) chunks <-> BPE token indices in [0, vocab_size)."""

    def __init__(self, chunk: int, dims: int, scale: float, bpe: str) -> None:
        self.chunk, self.dims, self.scale = chunk, dims, scale
        self.limit = coefficient_limit(chunk, scale)
        self.tokenizer = Tokenizer.from_str(bpe)
        self._dct = dct_matrix(chunk)

    @classmethod
    def fit(cls, chunks: np.ndarray, scale: float = 10.0, vocab: int = 1024) -> FastCodec:
        """BPE fitted on the training chunks (N, C, D), each already normalised to [-1, 1]."""
        _, chunk, dims = chunks.shape
        limit = coefficient_limit(chunk, scale)
        alphabet = [chr(FIRST_CHAR + q + limit) for q in range(-limit, limit + 1)]
        tokenizer = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=alphabet, show_progress=False, min_frequency=2)
        dct = dct_matrix(chunk)
        tokenizer.train_from_iterator([as_text(quantise(c, scale, dct), limit) for c in chunks], trainer)
        return cls(chunk, dims, scale, tokenizer.to_str())

    @property
    def bpe(self) -> str:
        return self.tokenizer.to_str()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @cached_property
    def token_coefficients(self) -> list[list[int]]:
        """For each token index, the rounded coefficients it stands for."""
        by_id = {index: text for text, index in self.tokenizer.get_vocab().items()}
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError("the FAST BPE's token ids are not 0 .. vocab_size - 1")
        return [[ord(ch) - FIRST_CHAR - self.limit for ch in by_id[i]] for i in range(len(by_id))]

    @cached_property
    def token_lengths(self) -> torch.Tensor:
        """(vocab_size,) coefficients per token: what the length constraint counts."""
        return torch.tensor([len(c) for c in self.token_coefficients], dtype=torch.long)

    @property
    def coefficients_per_chunk(self) -> int:
        return self.chunk * self.dims

    def encode(self, unit: np.ndarray) -> np.ndarray:
        """(C, D) normalised chunk -> token indices (variable length, at most C * D)."""
        text = as_text(quantise(np.reshape(unit, (self.chunk, self.dims)), self.scale, self._dct), self.limit)
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Token indices -> (C, D) normalised chunk. Raises when the tokens do not spell exactly C * D
        coefficients (decoding under :class:`LengthConstraint` always does)."""
        table = self.token_coefficients
        quantised = [q for i in np.asarray(indices, dtype=np.int64).reshape(-1) for q in table[int(i)]]
        if len(quantised) != self.coefficients_per_chunk:
            raise ValueError(
                f"FAST tokens spell {len(quantised)} coefficients; a chunk has {self.coefficients_per_chunk}"
            )
        coefficients = np.asarray(quantised, dtype=np.float64).reshape(self.chunk, self.dims) / self.scale
        return self._dct.T @ coefficients


class LengthConstraint:
    """Keeps a batch's FAST decoding to valid chunks: a row may only choose tokens that fit in the
    coefficients it still needs, and it is finished when it needs none.

    ``mask`` is applied to each step's logits over the action range before choosing (greedy or
    sampled); ``update`` records the chosen tokens. A finished row keeps stepping with the batch until
    every row is finished, and what it chooses then is dropped by ``split``."""

    def __init__(self, lengths: torch.Tensor, batch: int, total: int) -> None:
        self.lengths = lengths
        self.total = total
        self.remaining = torch.full((batch,), total, dtype=torch.long)
        self.used = torch.zeros(batch, dtype=torch.long)  # tokens each row has chosen while unfinished

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, vocab) logits with every token longer than a row's remaining coefficients at -inf
        (a finished row is left as it is: its choice is dropped)."""
        too_long = self.lengths[None, :] > self.remaining[:, None]
        too_long[self.remaining == 0] = False
        return logits.masked_fill(too_long.to(logits.device), float("-inf"))

    def update(self, chosen: torch.Tensor) -> None:
        """``chosen`` (B, 1) token indices into the action range (on any device; the state stays on the CPU)."""
        chosen = chosen.cpu()
        active = self.remaining > 0
        self.used += active.long()
        self.remaining = torch.where(active, self.remaining - self.lengths[chosen[:, 0]], self.remaining)

    @property
    def done(self) -> bool:
        return bool((self.remaining == 0).all())

    def split(self, tokens: np.ndarray) -> list[np.ndarray]:
        """(B, steps) decoded ids -> each row's own tokens."""
        return [row[: int(n)] for row, n in zip(tokens, self.used, strict=True)]
