#!/usr/bin/env python
"""Shim: `python scripts/search.py ARGS` = `cloome search ARGS` (also under `accelerate launch scripts/search.py`)."""

import sys

from cloome_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
