"""``fm-agent compare``: evaluation summaries side by side, as a table and a plot with 95 % CIs."""

from __future__ import annotations

import json

import matplotlib

from .config import CompareConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def comparison_rows(config: CompareConfig) -> list[dict]:
    """One row per (summary, mask), in the order given: label, mask, successes, episodes, CI, errors."""
    rows = []
    for i, path in enumerate(config.summaries):
        file = path if path.suffix == ".json" else path / "summary.json"
        label = config.labels[i] if config.labels else file.parent.name
        for mask, stats in json.loads(file.read_text())["masks"].items():
            overall = stats["overall"]
            rows.append(
                {
                    "label": label,
                    "mask": mask,
                    "successes": overall["successes"],
                    "episodes": overall["episodes"],
                    "rate": overall["success_rate"],
                    "ci95": overall["ci95"],
                    "errors": stats["errors"],
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| run | evaluated under | success (95 % CI) | errors |", "|---|---|---|---|"]
    for r in rows:
        low, high = (100 * x for x in r["ci95"])
        lines.append(
            f"| {r['label']} | {r['mask']} | {r['successes']}/{r['episodes']} ({low:.0f}-{high:.0f} %) | {r['errors']} |"
        )
    return "\n".join(lines)


def run_compare(config: CompareConfig, command: str = "") -> int:
    config.validate()
    rows = comparison_rows(config)
    table = markdown(rows)
    print(table)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.with_suffix(".md").write_text(table + "\n")
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2), 3.6))
    rates = [r["rate"] for r in rows]
    errors = [[r["rate"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["rate"] for r in rows]]
    colour = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(r["label"] for r in rows))}
    ax.bar(range(len(rows)), rates, yerr=errors, capsize=3, color=[colour[r["label"]] for r in rows])
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['label']}\n-> {r['mask']}" for r in rows], fontsize=7)
    ax.set_xlabel("run -> evaluated under")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success (95 % CI)")
    fig.tight_layout()
    fig.savefig(config.out, dpi=110)
    plt.close(fig)
    print(f"wrote {config.out} and {config.out.with_suffix('.md')}")
    return 0
