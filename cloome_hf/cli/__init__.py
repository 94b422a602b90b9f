"""The ``cloome`` command: every sub-command is implemented in the installed package.

    cloome train    ...   train CLOOME (accelerate launch -m cloome_hf.cli train ... for several processes)
    cloome prepare  ...   convert Bray npz / raw TIFF / JUMP data into Parquet shards
    cloome embed    ...   embed a dataset / molecule table into a Parquet embedding store
    cloome evaluate ...   the paper's tasks (retrieval, zero-shot, activity, MoA, mAP) -> results.json, report.md
    cloome search   ...   chemical <-> image search over embeddings
    cloome convert  ...   the published CLOOME checkpoints -> a from_pretrained folder
    cloome push     ...   publish a model and its embeddings to the Hub (or --local_dir)
    cloome serve    ...   a search page (Gradio): molecule -> sites, site -> molecules
    cloome space    ...   a Hugging Face Space folder serving that page

``cloome <command> --help`` shows each command's options; ``scripts/*.py`` are shims over these. A refused
input prints ``cloome <command>: error: ...`` and a hint, exit status 2; add ``--debug`` for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UsageError, run_at_boundary, split_debug_flag

COMMANDS = {
    "train": "train CLOOME on a Cell Painting dataset, from one CPU to many GPUs",
    "prepare": "convert a Bray npz / raw TIFF / JUMP source into Parquet shards",
    "embed": "embed a Cell Painting dataset / molecule table into a Parquet embedding store",
    "evaluate": "evaluate a model (retrieval, zero-shot, activity, MoA) and write results.json",
    "search": "query image and molecule embeddings with SMILES or images",
    "convert": "convert the published CLOOME checkpoints to a transformers folder",
    "push": "publish a model and its embeddings to the Hub (or --local_dir)",
    "serve": "serve a search page (Gradio) over an embedding store",
    "space": "write a Hugging Face Space folder (app.py, requirements.txt, README) serving that page",
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
    """Dispatch ``argv`` to a sub-command and return what it returns (e.g. a DataFrame for ``search``).
    Errors propagate (:func:`main` is the boundary that prints them as one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _parser().print_help()
        return None
    if argv[0] not in COMMANDS:
        raise UsageError(f"unknown command {argv[0]!r}; the commands are {', '.join(COMMANDS)}")
    module = importlib.import_module(f"{__name__}.{argv[0]}")
    return module.main(argv[1:])


def main(argv=None) -> int:
    """Console entry point (``cloome``, ``python -m cloome_hf.cli``, ``scripts/*.py``): run the command and return
    its exit status: 0, 1 when training stopped on a non-finite step, 2 for a refused input, printed as
    ``cloome COMMAND: error: ...`` and one line of what to do (``--debug`` anywhere shows the traceback)."""
    argv, debug = split_debug_flag(list(sys.argv[1:] if argv is None else argv))
    command = argv[0] if argv and argv[0] in COMMANDS else ""
    try:
        return run_at_boundary(command, lambda: run(argv), debug)
    except RuntimeError as err:
        from ..train.state import TrainingStopped  # imported here: torch loads only when a command needs it

        if not isinstance(err, TrainingStopped):
            raise
        print(f"cloome {command}: training stopped: {err}", file=sys.stderr)
        return 1


__all__ = ["COMMANDS", "main", "run"]
