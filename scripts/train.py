#!/usr/bin/env python
"""Shim: `python scripts/train.py ARGS` = `cloome train ARGS` (also under `accelerate launch scripts/train.py`)."""

import sys

from cloome_hf.cli import main  # the command's process settings: cloome_hf/runtime.py

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
