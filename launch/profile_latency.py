#!/usr/bin/env python
"""Prefill ms and decode ms/token for causal, each mask in prefill and full mode, and each with merge.

Example: python launch/profile_latency.py --preset quick --out runs/latency
"""

import sys

from fm_agent.profiling.report import cli

if __name__ == "__main__":
    sys.exit(cli())
