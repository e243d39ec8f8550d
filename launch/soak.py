#!/usr/bin/env python
"""Load/soak benchmark of the policy server: ``fm-agent soak`` (flags: --help; the config is fm_agent.profiling.config.SoakConfig)."""

import sys

from fm_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["soak", *sys.argv[1:]], prog="launch/soak.py"))
