"""Where the repository is, for tests that read its files (embedded checkpoints, scripts, protos)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
