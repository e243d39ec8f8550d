#!/usr/bin/env python
"""Where a BabyAI door-opening policy goes wrong: ``fm-agent door-errors`` (flags: --help; the config is fm_agent.evaluation.config.DoorErrorsConfig)."""

import sys

from fm_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["door-errors", *sys.argv[1:]], prog="launch/door_errors.py"))
