#!/usr/bin/env python
"""Shim: `python scripts/evaluate.py ARGS` = `cloome evaluate ARGS` (also under `accelerate launch scripts/evaluate.py`)."""

import os
import sys

# Transparent huge pages for torch's large CPU tensors (the batches): fewer page faults. torch reads this once,
# when it is imported, so it is set here, before the import; the library never changes the environment.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from cloome_hf.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
