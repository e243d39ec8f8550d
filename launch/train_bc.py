#!/usr/bin/env python
"""Behaviour cloning on recorded demonstrations: ``fm-agent train`` (flags: --help; the config is fm_agent.training.config.TrainConfig)."""

import sys

from fm_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], prog="launch/train_bc.py"))
