#!/usr/bin/env python
"""Success rate and per-step latency on BabyAI levels (the ALFRED-style world) through the policy server: ``fm-agent eval-babyai`` (flags: --help; the config is fm_agent.evaluation.config.BabyAIEvalConfig)."""

import sys

from fm_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval-babyai", *sys.argv[1:]], prog="launch/alfred_eval.py"))
