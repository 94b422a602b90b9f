#!/usr/bin/env python
"""Shim: `python scripts/embed.py ARGS` = `cloome embed ARGS` (also under `accelerate launch scripts/embed.py`)."""

import sys

from cloome_hf.cli import main  # the command's process settings: cloome_hf/runtime.py

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
