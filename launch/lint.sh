#!/usr/bin/env bash
# Lint, format check and type check with the pinned tools of .venv (CI runs this; pre-commit runs the same).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
