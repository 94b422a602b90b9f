"""The ``cloome`` command: every sub-command is implemented in the installed package.

    cloome train    ...   train CLOOME (accelerate launch -m cloome_hf.cli train ... for several processes)
    cloome prepare  ...   convert Bray npz / raw TIFF / JUMP data into Parquet shards
    cloome embed    ...   embed a dataset / molecule table into a Parquet embedding store
    cloome evaluate ...   the paper's tasks (retrieval, zero-shot, activity, MoA, mAP) -> results.json, report.md
    cloome search   ...   chemical <-> image search over embeddings
    cloome convert  ...   the published CLOOME checkpoints -> a from_pretrained folder
    cloome push     ...   publish a model and its embeddings to the Hub (or --local_dir)

``cloome <command> --help`` shows each command's options; ``scripts/*.py`` are shims over these.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": "train CLOOME on a Cell Painting dataset, from one CPU to many GPUs",
    "prepare": "convert a Bray npz / raw TIFF / JUMP source into Parquet shards",
    "embed": "embed a Cell Painting dataset / molecule table into a Parquet embedding store",
    "evaluate": "evaluate a model (retrieval, zero-shot, activity, MoA) and write results.json",
    "search": "query image and molecule embeddings with SMILES or images",
    "convert": "convert the published CLOOME checkpoints to a transformers folder",
    "push": "publish a model and its embeddings to the Hub (or --local_dir)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloome", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in COMMANDS.items():
        # add_help=False: "cloome CMD --help" must reach the command's own parser
        sub.add_parser(name, help=text, add_help=False)
    return parser


def run(argv=None):
    """Dispatch ``argv`` to a sub-command and return what it returns (e.g. a DataFrame for ``search``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = _parser()
        parser.print_help()
        if argv and argv[0] not in ("-h", "--help"):
            parser.exit(2, f"cloome: unknown command {argv[0]!r}\n")
        return None
    module = importlib.import_module(f"{__name__}.{argv[0]}")
    return module.main(argv[1:])


def main(argv=None) -> int:
    """Console entry point: run the command and exit 0 (its result is printed or written, not returned)."""
    from ..train.loop import TrainingStopped

    try:
        run(argv)
    except TrainingStopped as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 1
    return 0


__all__ = ["COMMANDS", "main", "run"]
