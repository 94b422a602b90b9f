#!/usr/bin/env python
"""Shim: `python scripts/evaluate.py ARGS` = `cloome evaluate ARGS` (also under `accelerate launch scripts/evaluate.py`)."""

import sys

from cloome_hf.cli import main  # the command's process settings: cloome_hf/runtime.py

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
