#!/usr/bin/env python
"""Prefill and decode latency of every mask: ``fm-agent profile`` (flags: --help; the config is fm_agent.profiling.config.ProfileConfig)."""

import sys

from fm_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["profile", *sys.argv[1:]], prog="launch/profile_latency.py"))
