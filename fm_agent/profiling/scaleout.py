"""``fm-agent scaleout``: how episode throughput grows with workers, on worker processes and on Ray.

Each configuration is a full evaluation (its own folder, its own server) over the same episodes, so
the outcomes can be compared as well as the speed. Throughput counts the episodes' wall time only
(``last_run`` of the summary); start-up (cluster, server, simulator builds) is reported beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import matplotlib

from ..evaluation.config import BabyAIEvalConfig, LiberoEvalConfig, ServerEvalConfig
from ..evaluation.harness import versions
from ..evaluation.jobs import run_babyai_eval, run_libero_eval
from .config import ScaleoutConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

DEFAULT_CHECKPOINTS = {"libero": Path("checkpoints/libero_spatial"), "babyai": Path("checkpoints/babyai_opendoors")}


def _evaluation(config: ScaleoutConfig, backend: str, workers: int, out: Path) -> ServerEvalConfig:
    checkpoint = config.checkpoint or DEFAULT_CHECKPOINTS[config.benchmark]
    evaluation: ServerEvalConfig
    if config.benchmark == "libero":
        evaluation = LiberoEvalConfig(checkpoint=checkpoint, tasks=tuple(range(config.episodes)), init_states=(10,))
    else:
        evaluation = BabyAIEvalConfig(checkpoint=checkpoint, episodes=config.episodes, seed=100_000)
    evaluation.workers, evaluation.server_threads, evaluation.max_steps = (
        workers,
        config.server_threads,
        config.max_steps,
    )
    evaluation.ray, evaluation.out = ("local" if backend == "ray" else None), out
    return evaluation


def run_scaleout(config: ScaleoutConfig, command: str = "") -> int:
    config.validate()
    config.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for workers in config.workers:
        for backend in config.backends:
            folder = config.out / f"{backend}_w{workers}"
            shutil.rmtree(folder, ignore_errors=True)  # a benchmark times a whole run, never a resumed one
            evaluation = _evaluation(config, backend, workers, folder)
            began = time.perf_counter()
            run = run_libero_eval if config.benchmark == "libero" else run_babyai_eval
            code = run(evaluation, command)  # type: ignore[arg-type]
            total = time.perf_counter() - began
            summary = json.loads((folder / "summary.json").read_text())
            outcomes = {m: s["overall"]["successes"] for m, s in summary["masks"].items()}
            record = {**summary["last_run"], "total_s": round(total, 2), "exit_code": code, "successes": outcomes}
            runs.append(record)
            print(
                f"{backend:9s} workers {workers}: {record['episodes_per_hour']} episodes/h "
                f"({record['episodes']} in {record['wall_s']:.1f} s; {total:.1f} s with start-up)"
            )
    by_key = {(r["backend"], r["workers"]): r for r in runs}
    base = by_key.get(("processes", max(config.workers)))
    ray_run = by_key.get(("ray local", max(config.workers)))
    report = {
        "command": command,
        "benchmark": config.benchmark,
        "cpus": os.cpu_count(),
        "versions": versions(),
        "runs": runs,
        "ray_over_processes_at_max_workers": (
            round(ray_run["episodes_per_hour"] / base["episodes_per_hour"], 3) if base and ray_run else None
        ),
    }
    (config.out / "scaleout.json").write_text(json.dumps(report, indent=2))
    _plot(runs, config.out / "scaleout.png", config.benchmark)
    print(f"ray / processes at {max(config.workers)} workers: {report['ray_over_processes_at_max_workers']}")
    print(f"wrote {config.out / 'scaleout.json'} and {config.out / 'scaleout.png'}")
    return 0


def _plot(runs: list[dict], path: Path, benchmark: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for backend in sorted({r["backend"] for r in runs}):
        points = sorted((r["workers"], r["episodes_per_hour"] or 0) for r in runs if r["backend"] == backend)
        ax.plot(*zip(*points), marker="o", label=backend)
    ax.set_xticks(sorted({r["workers"] for r in runs}))
    ax.set_xlabel("simulator workers")
    ax.set_ylabel("episodes per hour")
    ax.set_title(f"{benchmark}: episode throughput")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
