#!/usr/bin/env bash
# Set up (first run only) and run the main job. Extra arguments go to the job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec .venv/bin/fm-agent profile --preset quick "$@"
