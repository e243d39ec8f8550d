#!/usr/bin/env python
"""Record expert demonstrations: ``fm-agent record`` (flags: --help; the config is fm_agent.data.config.RecordConfig)."""

import sys

from fm_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["record", *sys.argv[1:]], prog="launch/record_demos.py"))
