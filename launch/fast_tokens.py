"""How much does the FAST action encoding shorten LIBERO's action chunks, and at what error?

The binned LIBERO policies spend one decoded token per dimension per action (28 at chunk 4), and
decoding is most of an autoregressive control step (docs/latency.md). FAST (the pi0-FAST / NORA
action format, ``fm-agent train --action-encoding fast``, fm_agent/model/fast_actions.py) compresses
a chunk instead: a per-dimension DCT over the chunk, rounding, and BPE fitted on the demonstrations.
This script fits that encoding on the chunks of some recorded episodes and reports, on episodes it was
not fitted on, the tokens per chunk and the reconstruction error, beside per-dimension binning, for
several chunk lengths and scales.

    python launch/fast_tokens.py --data runs/heads_demos --chunks 4 8 16 --scales 5 10 20 --out docs/results/fast_tokens.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fm_agent.data.episodes import load_episodes
from fm_agent.model.action_tokenizer import ActionTokenizer


def executed_chunks(actions: list[np.ndarray], chunk: int) -> np.ndarray:
    """(N, chunk, D): the chunks a client executing whole chunks would run (steps 0, chunk, 2 chunk, ...),
    the last one padded with the episode's final action, as training's targets are."""
    return np.stack(
        [a[np.minimum(np.arange(t, t + chunk), len(a) - 1)] for a in actions for t in range(0, len(a), chunk)]
    )


def measure(train: list[np.ndarray], test: list[np.ndarray], chunk: int, scale: float, vocab: int) -> dict:
    actions = np.concatenate(train)
    binning = ActionTokenizer.fit(actions, bins=256, chunk=chunk)
    fast = ActionTokenizer.fit_fast(actions, executed_chunks(train, chunk), scale=scale, vocab=vocab)
    test_chunks = executed_chunks(test, chunk)
    encoded = [fast.encode(c) for c in test_chunks]
    lengths = np.array([len(ids) for ids in encoded])
    fast_error = np.abs(np.stack([fast.decode(ids) for ids in encoded]) - test_chunks)
    binned = np.stack([binning.decode(binning.encode(c)) for c in test_chunks])
    bin_error = np.abs(binned - test_chunks)
    return {
        "chunk": chunk,
        "test_chunks": len(test_chunks),
        "binning_tokens_per_chunk": binning.tokens_per_call,
        "fast_tokens_per_chunk_mean": float(lengths.mean()),
        "fast_tokens_per_chunk_p95": float(np.percentile(lengths, 95)),
        "fast_tokens_per_chunk_max": int(lengths.max()),
        "compression": binning.tokens_per_call / float(lengths.mean()),
        "fast_vocab": fast.bins,
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
