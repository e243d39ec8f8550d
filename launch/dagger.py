#!/usr/bin/env python
"""Collect DAgger data: ``fm-agent dagger`` (flags: --help; the config is fm_agent.data.config.DaggerConfig)."""

import sys

from fm_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["dagger", *sys.argv[1:]], prog="launch/dagger.py"))
