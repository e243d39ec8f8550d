#!/usr/bin/env python
"""Success rate and per-step latency on LIBERO through the policy server: ``fm-agent eval-libero`` (flags: --help; the config is fm_agent.evaluation.config.LiberoEvalConfig)."""

import sys

from fm_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval-libero", *sys.argv[1:]], prog="launch/libero_eval.py"))
