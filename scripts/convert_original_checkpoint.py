#!/usr/bin/env python
"""Shim: `python scripts/convert_original_checkpoint.py ARGS` = `cloome convert ARGS` (also under `accelerate launch scripts/convert_original_checkpoint.py`)."""

import sys

from cloome_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
