"""``cloome prepare``: Bray npz / raw TIFF / JUMP data -> Parquet shards (= ``python -m cloome_hf.data prepare``)."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    from ..data.__main__ import add_prepare_arguments
    from ..data.schema_docs import PREPARE_EPILOG

    p = argparse.ArgumentParser(prog="cloome prepare", epilog=PREPARE_EPILOG,
                                description="Convert a Cell Painting source (a TIFF folder, Bray npz files or a "
                                "CellProfiler / JUMP LoadData table) into Parquet shards that cloome train, "
                                "embed and evaluate read with --dataset.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prepare_arguments(p)
    return p


def main(argv=None) -> dict:
    from ..data.__main__ import run_prepare

    return run_prepare(build_parser().parse_args(argv))


__all__ = ["build_parser", "main"]
