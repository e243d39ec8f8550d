"""Module-level job functions for the Ray runner tests (Ray workers import them by name: tests/ is on
their PYTHONPATH through the test cluster's runtime environment)."""

from __future__ import annotations

import os
from pathlib import Path

_CALLS = 0  # per worker process: how many jobs it has run


def counted(job: int) -> tuple[int, int, int]:
    """(job, worker pid, jobs this worker ran so far): shows a worker's module state surviving across jobs."""
    global _CALLS
    _CALLS += 1
    return job, os.getpid(), _CALLS


def dies_once(job: tuple[str, int]) -> int:
    """Kills its own worker process the first time it sees job 2 (as a lost node would), else job * 10."""
    folder, value = job
    marker = Path(folder) / f"died_{value}"
    if value == 2 and not marker.exists():
        marker.touch()
        os._exit(1)
    return value * 10


def always_dies(job: int) -> int:
    os._exit(1)
