"""Would a FAST-style action tokenizer shorten LIBERO's action chunks? A measurement, not a model option.

The shipped LIBERO policy spends one cached decode step per action token: 7 dimensions x chunk
tokens per call (28 at chunk 4), and decoding is most of a control step (docs/latency.md). FAST
(the pi0-FAST / NORA action format) compresses a chunk instead: each dimension's normalised
trajectory over the chunk goes through a DCT, the coefficients are scaled and rounded, flattened
lowest frequency first, and byte-pair encoding (fitted on the demonstrations, here with
``tokenizers``) merges frequent runs into single tokens. This script fits that tokenizer on the
chunks of a set of recorded episodes and reports, on episodes it was not fitted on, the tokens per
chunk and the reconstruction error, beside the per-dimension binning the checkpoints use, for
several chunk lengths.

    python launch/fast_tokens.py --data runs/heads_demos --chunks 4 8 16 --scales 5 10 20 --out docs/results/fast_tokens.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.fft import dct, idct
from tokenizers import Tokenizer, models, trainers

from fm_agent.data.episodes import load_episodes
from fm_agent.model.action_tokenizer import ActionTokenizer

FIRST_CHAR = 0x100  # quantised coefficient q is the character FIRST_CHAR + q - lowest (printable, no whitespace)


def executed_chunks(actions: list[np.ndarray], chunk: int) -> np.ndarray:
    """(N, chunk, D): the chunks a client executing whole chunks would run (steps 0, chunk, 2 chunk, ...),
    the last one padded with the episode's final action, as training's targets are."""
    return np.stack(
        [a[np.minimum(np.arange(t, t + chunk), len(a) - 1)] for a in actions for t in range(0, len(a), chunk)]
    )


def coefficients(chunks: np.ndarray, binning: ActionTokenizer, scale: float) -> np.ndarray:
    """(N, C, D) actions -> (N, C * D) rounded DCT coefficients, lowest frequency first across dimensions."""
    low, high = np.asarray(binning.low), np.asarray(binning.high)
    unit = np.clip(2 * (chunks - low) / (high - low) - 1, -1, 1)
    return np.rint(dct(unit, axis=1, norm="ortho") * scale).astype(np.int64).reshape(len(chunks), -1)


def reconstruct(quantised: np.ndarray, binning: ActionTokenizer, chunk: int, scale: float) -> np.ndarray:
    low, high = np.asarray(binning.low), np.asarray(binning.high)
    unit = idct(quantised.reshape(len(quantised), chunk, -1) / scale, axis=1, norm="ortho")
    return np.clip((unit + 1) / 2 * (high - low) + low, binning.clip_low, binning.clip_high)


def as_text(quantised: np.ndarray, lowest: int) -> list[str]:
    return ["".join(chr(FIRST_CHAR + int(q) - lowest) for q in row) for row in quantised]


def fit_bpe(texts: list[str], alphabet: list[str], vocab: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())  # no pre-tokenizer: each chunk is one word, merges may span dimensions
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=alphabet, show_progress=False, min_frequency=2)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def measure(train: list[np.ndarray], test: list[np.ndarray], chunk: int, scale: float, vocab: int) -> dict:
    binning = ActionTokenizer.fit(np.concatenate(train), bins=256, chunk=chunk)
    train_q = coefficients(executed_chunks(train, chunk), binning, scale)
    test_chunks = executed_chunks(test, chunk)
    test_q = coefficients(test_chunks, binning, scale)
    lowest = int(min(train_q.min(), test_q.min()))
    highest = int(max(train_q.max(), test_q.max()))
    alphabet = [chr(FIRST_CHAR + q - lowest) for q in range(lowest, highest + 1)]
    tokenizer = fit_bpe(as_text(train_q, lowest), alphabet, vocab)
    lengths = np.array([len(tokenizer.encode(text).ids) for text in as_text(test_q, lowest)])
    fast_error = np.abs(reconstruct(test_q, binning, chunk, scale) - test_chunks)
    binned = binning.decode(binning.encode(test_chunks.reshape(-1, test_chunks.shape[-1]))).reshape(test_chunks.shape)
    bin_error = np.abs(binned - test_chunks)
    return {
        "chunk": chunk,
        "test_chunks": len(test_chunks),
        "binning_tokens_per_chunk": binning.tokens_per_call,
        "fast_tokens_per_chunk_mean": float(lengths.mean()),
        "fast_tokens_per_chunk_p95": float(np.percentile(lengths, 95)),
        "fast_tokens_per_chunk_max": int(lengths.max()),
        "compression": binning.tokens_per_call / float(lengths.mean()),
        "fast_vocab": tokenizer.get_vocab_size(),
        "fast_mean_abs_error": float(fast_error.mean()),
        "fast_max_abs_error": float(fast_error.max()),
        "binning_mean_abs_error": float(bin_error.mean()),
        "binning_max_abs_error": float(bin_error.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="recorded LIBERO episode folders")
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument(
        "--scales", type=float, nargs="+", default=[10.0], help="DCT coefficients are multiplied by each, then rounded"
    )
    parser.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary size")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="episodes held out of the fit")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()
    episodes = [e for folder in args.data for e in load_episodes(folder, ["agentview", "wrist"])]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(episodes))
    held_out = max(1, round(args.test_fraction * len(episodes)))
    test = [episodes[i].actions for i in order[:held_out]]
    train = [episodes[i].actions for i in order[held_out:]]
    rows = [
        {"scale": scale, **measure(train, test, chunk, scale, args.vocab)}
        for scale in args.scales
        for chunk in args.chunks
    ]
    print(f"{len(train)} episodes fitted, {len(test)} held out; BPE vocabulary {args.vocab}")
    print("scale  chunk  binning tokens  FAST tokens (mean / p95 / max)  compression  mean |error| FAST / binning")
    for r in rows:
        print(
            f"{r['scale']:5g}  {r['chunk']:5}  {r['binning_tokens_per_chunk']:14}  {r['fast_tokens_per_chunk_mean']:8.1f} / "
            f"{r['fast_tokens_per_chunk_p95']:4.0f} / {r['fast_tokens_per_chunk_max']:3}        "
            f"{r['compression']:8.1f}x  {r['fast_mean_abs_error']:.4f} / {r['binning_mean_abs_error']:.4f}"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {"data": [str(d) for d in args.data], "vocab": args.vocab}
        settings |= {"episodes_fitted": len(train), "episodes_held_out": len(test)}
        args.out.write_text(json.dumps({"settings": settings, "results": rows}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
