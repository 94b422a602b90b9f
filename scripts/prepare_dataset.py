#!/usr/bin/env python
"""Convert Cell Painting data (Bray 2017 npz, raw TIFF, JUMP) into Parquet shards, or write synthetic data.

Same as ``python -m cloome_hf.data``; run with ``--help`` for the options of ``prepare`` and ``synthetic``.
"""

from cloome_hf.data.__main__ import main

if __name__ == "__main__":
    main()
