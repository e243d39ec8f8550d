#!/usr/bin/env python
"""Quick in-process evaluation of a checkpoint or the random baseline: ``fm-agent eval-local`` (flags: --help; the config is fm_agent.evaluation.config.LocalEvalConfig)."""

import sys

from fm_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval-local", *sys.argv[1:]], prog="launch/eval_policy.py"))
