"""``fm-agent compare``: evaluation summaries side by side, as a table and a plot with 95 % CIs.

With ``--x`` each summary also carries a number (its training data, its parameter count, the minutes
of rendering its data cost) and the plot becomes a curve of success against it: the form in which a
question like "is this policy limited by data or by capacity?" gets answered.

When a summary comes from the chunk executor (``--executor``), the table also says how each arm moved
and what the robot saw: the mean action jerk, waits per tick, the mean wait, and the predictions
dropped and merged, and the plot gains a jerk panel, since aggregation is judged by motion as much as
by success."""

from __future__ import annotations

import json

import matplotlib

from .config import CompareConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def comparison_rows(config: CompareConfig) -> list[dict]:
    """One row per (summary, mask), in the order given: label, mask, successes, episodes, CI, errors
    (and x with --x); with --masks only those masks."""
    rows = []
    for i, path in enumerate(config.summaries):
        file = path if path.suffix == ".json" else path / "summary.json"
        label = config.labels[i] if config.labels else file.parent.name
        for mask, stats in json.loads(file.read_text())["masks"].items():
            if config.masks and mask not in config.masks:
                continue
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
                    "jerk": stats.get("action_jerk", {}).get("mean"),
                    "executor": stats.get("executor"),
                }
                | ({"x": config.x[i]} if config.x else {})
            )
    return rows


def _execution_cells(row: dict) -> str:
    jerk = f" {row['jerk']:.4f} |" if row["jerk"] is not None else " - |"
    run = row["executor"]
    if not run:
        return jerk + " - | - | - | - |"
    return (
        jerk + f" {run['waits']:.0f}/{run['ticks']:.0f} | {run['mean_wait_ms']:.0f} ms |"
        f" {run['dropped']:.0f} | {run['merged']:.0f} |"
    )


def _has_executor_runs(rows: list[dict]) -> bool:
    return any(r.get("executor") for r in rows)


def markdown(rows: list[dict], x_label: str = "x") -> str:
    with_x = any("x" in r for r in rows)
    with_execution = _has_executor_runs(rows)
    head = "| run |" + (f" {x_label} |" if with_x else "") + " evaluated under | success (95 % CI) | errors |"
    if with_execution:
        head += " action jerk | waits/ticks | mean wait | dropped | merged |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        low, high = (100 * x for x in r["ci95"])
        x_cell = f" {r['x']:g} |" if with_x else ""
        lines.append(
            f"| {r['label']} |{x_cell} {r['mask']} | {r['successes']}/{r['episodes']} ({low:.0f}-{high:.0f} %)"
            f" | {r['errors']} |" + (_execution_cells(r) if with_execution else "")
        )
    return "\n".join(lines)


def _ci_errors(rows: list[dict]) -> list[list[float]]:
    """The 95 % CI as matplotlib's asymmetric yerr: distances below and above each rate."""
    return [[r["rate"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["rate"] for r in rows]]


def _plot_bars(ax, rows: list[dict], values: list[float], yerr: list[list[float]] | None = None) -> None:
    """One bar per row, coloured by run: success with its CI, or an executor run's jerk."""
    colour = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(r["label"] for r in rows))}
    ax.bar(range(len(rows)), values, yerr=yerr, capsize=3, color=[colour[r["label"]] for r in rows])
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['label']}\n-> {r['mask']}" for r in rows], fontsize=7)
    ax.set_xlabel("run -> evaluated under")


def _plot_curve(ax, rows: list[dict], x_label: str, log_x: bool) -> None:
    """One line per mask through the summaries sorted by x, each point labelled with its run, so
    several runs at the same x (two seeds, two recipes) stay visible as separate points."""
    for i, mask in enumerate(dict.fromkeys(r["mask"] for r in rows)):
        points = sorted((r for r in rows if r["mask"] == mask), key=lambda r: r["x"])
        xs = [r["x"] for r in points]
        rates = [r["rate"] for r in points]
        ax.errorbar(xs, rates, yerr=_ci_errors(points), capsize=3, marker="o", color=f"C{i}", label=mask)
        for r in points:
            ax.annotate(r["label"], (r["x"], r["rate"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.legend(fontsize=7, title="evaluated under", title_fontsize=7)


def run_compare(config: CompareConfig, command: str = "") -> int:
    config.validate()
    rows = comparison_rows(config)
    if not rows:
        print(f"no summary holds a row evaluated under {', '.join(config.masks)}")
        return 1
    table = markdown(rows, config.x_label)
    print(table)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.with_suffix(".md").write_text(table + "\n")
    if config.x:
        fig, ax = plt.subplots(figsize=(6.0, 3.8))
        _plot_curve(ax, rows, config.x_label, config.log_x)
    elif _has_executor_runs(rows):
        width = max(5.0, 0.7 * len(rows) + 2)
        fig, (ax, jerk_ax) = plt.subplots(1, 2, figsize=(2 * width, 3.6))
        _plot_bars(ax, rows, [r["rate"] for r in rows], _ci_errors(rows))
        _plot_bars(jerk_ax, rows, [r["jerk"] or 0.0 for r in rows])
        jerk_ax.set_ylabel("action jerk (mean over episodes)")
    else:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2), 3.6))
        _plot_bars(ax, rows, [r["rate"] for r in rows], _ci_errors(rows))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success (95 % CI)")
    fig.tight_layout()
    fig.savefig(config.out, dpi=110)
    plt.close(fig)
    print(f"wrote {config.out} and {config.out.with_suffix('.md')}")
    return 0
