"""``cloome prepare``: Bray npz / raw TIFF / JUMP data -> Parquet shards (= ``python -m cloome_hf.data prepare``)."""

from __future__ import annotations


def main(argv=None) -> dict:
    from ..data.__main__ import main as data_main

    return data_main(["prepare", *(argv or [])])


__all__ = ["main"]
