#!/usr/bin/env python
"""Load/soak benchmark of the policy server: ``fm-agent soak`` (see fm_agent/profiling/soak.py)."""

import sys

from fm_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["soak", *sys.argv[1:]]))
