#!/usr/bin/env python
"""Shim: `python scripts/push_to_hub.py ARGS` = `cloome push ARGS` (also under `accelerate launch scripts/push_to_hub.py`)."""

import sys

from cloome_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["push", *sys.argv[1:]]))
