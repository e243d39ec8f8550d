"""Command line, table, JSON and plot for the latency profile."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from .latency import DEFAULT_SPECS, DecoderShape, ProfileSettings, run_profile, settings_dict, summarise

PRESETS = {
    "full": dict(contexts=(256, 1024, 2048), dtypes=("float32", "bfloat16"), repetitions=3),
    "quick": dict(contexts=(256, 1024), dtypes=("float32",), repetitions=2, decode_tokens=4, full_decode_tokens=1),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full",
                        help="full: the issue's grid (about 10-20 min on 2 CPU cores); quick: a 1-2 minute look")
    parser.add_argument("--contexts", type=int, nargs="+", help="prompt lengths in tokens (overrides the preset)")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS),
                        help="mask labels: causal, Mf, Mv2v, Mv2t with /prefill, /full or +merge")
    parser.add_argument("--repetitions", type=int, help="timed repetitions per configuration (after one warm-up)")
    parser.add_argument("--decode-tokens", type=int, help="cached decode steps timed per repetition")
    parser.add_argument("--full-decode-tokens", type=int, help="cache-free decode steps for /full masks")
    parser.add_argument("--frame-tokens", type=int, default=64, help="visual tokens per frame in the prompt layout")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 gives stable numbers)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--out", type=Path, default=Path("runs/latency"), help="folder for latency.json and .png")
    parser.add_argument("--grpc", action="store_true",
                        help="instead: transport cost of Act (gRPC vs openpi msgpack/websockets vs pickle) and "
                             "micro-batching throughput, on --checkpoint")
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/libero_spatial"),
                        help="with --grpc: the policy to serve")
    parser.add_argument("--grpc-repeats", type=int, default=50)
    parser.add_argument("--step", action="store_true",
                        help="instead: one control step (vision / prefill / decode) against one forward, per chunk "
                             "length, autoregressive vs parallel action head, on --checkpoint's shape")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="with --step")
    parser.add_argument("--step-repetitions", type=int, default=15, help="with --step")


def settings_from(args: argparse.Namespace) -> ProfileSettings:
    values = dict(PRESETS[args.preset])
    for name in ("contexts", "dtypes", "repetitions", "decode_tokens", "full_decode_tokens"):
        if getattr(args, name) is not None:
            value = getattr(args, name)
            values[name] = tuple(value) if isinstance(value, list) else value
    shape = DecoderShape(args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate, args.vocab)
    return ProfileSettings(specs=tuple(args.specs), frame_tokens=args.frame_tokens, threads=args.threads,
                           shape=shape, **values)


def format_table(rows: list[dict]) -> str:
    header = f"{'dtype':9} {'ctx':>5} {'spec':14} {'prefill ms':>11} {'x causal':>8} {'decode ms/tok':>13} " \
             f"{'x causal':>8} {'mask build':>10}"
    lines = [header, "-" * len(header)]
    for r in sorted(rows, key=lambda r: (r["dtype"], r["context"], DEFAULT_SPECS.index(r["spec"])
                                         if r["spec"] in DEFAULT_SPECS else 99)):
        lines.append(f"{r['dtype']:9} {r['context']:>5} {r['spec']:14} {r['prefill_ms']:>11.1f} "
                     f"{r.get('prefill_ratio_to_causal', float('nan')):>8.2f} {r['decode_ms_per_token']:>13.2f} "
                     f"{r.get('decode_ratio_to_causal', float('nan')):>8.2f} "
                     f"{100 * r['mask_build_fraction_of_prefill']:>9.1f}%")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(len(dtypes), 2, figsize=(12, 4 * len(dtypes)), squeeze=False)
    for d, dtype in enumerate(dtypes):
        for c, (metric, title) in enumerate([("prefill_ms", "prefill (ms)"), ("decode_ms_per_token", "decode (ms/token)")]):
            ax = axes[d][c]
            for spec in dict.fromkeys(r["spec"] for r in rows):
                pts = sorted((r["context"], r[metric], *(r[metric + "_iqr"])) for r in rows
                             if r["dtype"] == dtype and r["spec"] == spec)
                xs, ys, lo, hi = zip(*pts)
                style = "-" if spec == "causal" else ("--" if "merge" in spec else ":")
                ax.errorbar(xs, ys, yerr=[[y - l for y, l in zip(ys, lo)], [h - y for y, h in zip(ys, hi)]],
                            label=spec, linestyle=style, marker="o", capsize=2)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context (tokens)")
            ax.set_title(f"{title}, {dtype}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.grpc:
        from .transport import main as transport_main

        return transport_main(args.checkpoint, args.out, args.grpc_repeats)
    if args.step:
        from .step import main as step_main

        return step_main(args.checkpoint, args.out, tuple(args.chunks), args.step_repetitions, args.threads)
    settings = settings_from(args)
    samples = run_profile(settings, progress=lambda it: tqdm(list(it), desc="profiling", unit="run"))
    rows = summarise(samples)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join(sys.argv), "machine": {"platform": platform.platform(),
              "processor": platform.processor(), "torch": torch.__version__, "threads": settings.threads},
              "settings": settings_dict(settings), "results": rows}
    (args.out / "latency.json").write_text(json.dumps(report, indent=2))
    plot(rows, args.out / "latency.png")
    print(format_table(rows))
    print(f"\nwrote {args.out / 'latency.json'} and {args.out / 'latency.png'}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prefill and decode latency of every attention mask.")
    add_arguments(parser)
    return main(parser.parse_args(argv))
