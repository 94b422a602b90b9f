#!/usr/bin/env python
"""Shim: `python scripts/prepare_dataset.py ARGS` = `cloome prepare ARGS` (also under `accelerate launch scripts/prepare_dataset.py`)."""

import sys

from cloome_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
