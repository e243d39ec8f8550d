"""Table, JSON and plot of the mask latency profile."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import matplotlib
import torch
import transformers
from tqdm import tqdm

from .config import PROFILE_PRESETS, PROFILE_SPECS, ProfileConfig
from .latency import DecoderShape, ProfileSettings, run_profile, settings_dict, summarise

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def settings_from(config: ProfileConfig) -> ProfileSettings:
    values = dict(PROFILE_PRESETS[config.preset])
    for name in ("contexts", "dtypes", "repetitions", "decode_tokens", "full_decode_tokens"):
        if getattr(config, name) is not None:
            values[name] = getattr(config, name)
    shape = DecoderShape(config.hidden, config.layers, config.heads, config.kv_heads, config.intermediate, config.vocab)
    return ProfileSettings(
        specs=tuple(config.specs),
        frame_tokens=config.frame_tokens,
        threads=config.threads,
        device=config.device,
        shape=shape,
        static_decode=config.static_decode,
        **values,
    )


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'dtype':9} {'ctx':>5} {'spec':14} {'prefill ms':>11} {'x causal':>8} {'decode ms/tok':>13} "
        f"{'x causal':>8} {'mask build':>10}"
    )
    static = any("static_decode_ms_per_token" in r for r in rows)
    if static:
        header += f" {'static ms/tok':>13} {'speedup':>7} {'same tokens':>11}"
    lines = [header, "-" * len(header)]
    for r in sorted(
        rows,
        key=lambda r: (r["dtype"], r["context"], PROFILE_SPECS.index(r["spec"]) if r["spec"] in PROFILE_SPECS else 99),
    ):
        lines.append(
            f"{r['dtype']:9} {r['context']:>5} {r['spec']:14} {r['prefill_ms']:>11.1f} "
            f"{r.get('prefill_ratio_to_causal', float('nan')):>8.2f} {r['decode_ms_per_token']:>13.2f} "
            f"{r.get('decode_ratio_to_causal', float('nan')):>8.2f} "
            f"{100 * r['mask_build_fraction_of_prefill']:>9.1f}%"
        )
        if static and "static_decode_ms_per_token" in r:
            lines[-1] += (
                f" {r['static_decode_ms_per_token']:>13.2f} {r['static_decode_speedup']:>7.2f} "
                f"{'yes' if r['static_tokens_match'] else 'NO':>11}"
            )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(len(dtypes), 2, figsize=(12, 4 * len(dtypes)), squeeze=False)
    for d, dtype in enumerate(dtypes):
        for c, (metric, title) in enumerate(
            [("prefill_ms", "prefill (ms)"), ("decode_ms_per_token", "decode (ms/token)")]
        ):
            ax = axes[d][c]
            for spec in dict.fromkeys(r["spec"] for r in rows):
                pts = sorted(
                    (r["context"], r[metric], *(r[metric + "_iqr"]))
                    for r in rows
                    if r["dtype"] == dtype and r["spec"] == spec
                )
                xs, ys, lo, hi = zip(*pts)
                style = "-" if spec == "causal" else ("--" if "merge" in spec else ":")
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[[y - l for y, l in zip(ys, lo)], [h - y for y, h in zip(ys, hi)]],
                    label=spec,
                    linestyle=style,
                    marker="o",
                    capsize=2,
                )
            static = sorted(
                (r["context"], r["static_decode_ms_per_token"])
                for r in rows
                if metric == "decode_ms_per_token"
                and r["dtype"] == dtype
                and r["spec"] == "causal"
                and "static_decode_ms_per_token" in r
            )
            if static:
                ax.plot(*zip(*static), label="causal, static cache", color="black", linestyle="-.", marker="s")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context (tokens)")
            ax.set_title(f"{title}, {dtype}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_profile(config: ProfileConfig, command: str) -> int:
    """The mask latency grid: table on stdout, ``latency.json`` and ``latency.png`` in ``config.out``."""
    settings = settings_from(config)
    samples = run_profile(settings, progress=lambda it: tqdm(list(it), desc="profiling", unit="run"))
    rows = summarise(samples)
    config.out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": command,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": settings.threads,
            "device": settings.device,
            "accelerator": torch.cuda.get_device_name(settings.device) if settings.device != "cpu" else None,
        },
        "settings": settings_dict(settings),
        "results": rows,
    }
    (config.out / "latency.json").write_text(json.dumps(report, indent=2))
    plot(rows, config.out / "latency.png")
    print(format_table(rows))
    print(f"\nwrote {config.out / 'latency.json'} and {config.out / 'latency.png'}")
    return 0
