"""The ``cloome`` command: thin sub-commands over the scripts and package functions.

    cloome embed    ...   scripts/embed.py      (accelerate launch -m cloome_hf.cli embed ... for several processes)
    cloome search   ...   chemical <-> image search over embeddings (cloome_hf.search)
    cloome convert  ...   scripts/convert_original_checkpoint.py
    cloome evaluate ...   scripts/evaluate.py
    cloome push     ...   scripts/push_to_hub.py

``cloome <command> --help`` shows each command's options.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

SCRIPTS = {"embed": "embed", "convert": "convert_original_checkpoint", "evaluate": "evaluate", "push": "push_to_hub"}
SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"
HELP = {
    "embed": "embed a Cell Painting dataset / molecule table into a Parquet embeddings dataset",
    "search": "query image and molecule embeddings with SMILES or images",
    "convert": "convert the published CLOOME checkpoints to a transformers folder",
    "evaluate": "evaluate a model (retrieval, zero-shot, activity, MoA) and write results.json",
    "push": "publish a model and its embeddings to the Hub (or --local_dir)",
}


def script_main(command: str):
    """The ``main(argv)`` of the script behind ``command``, imported from the source checkout's ``scripts/``."""
    path = SCRIPTS_DIR / f"{SCRIPTS[command]}.py"
    if not path.is_file():
        raise ValueError(f"'cloome {command}' needs {path}; install cloome-hf from a source checkout "
                         "(pip install -e .)")
    spec = importlib.util.spec_from_file_location(f"cloome_scripts_{SCRIPTS[command]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloome search", description=(
        "Query CLOOME embeddings: SMILES -> images (--smiles), image -> molecules (--images), image -> images "
        "(--images --similar). Results: one row per (query, hit) with score and metadata."))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--embeddings", help="scripts/embed.py output folder (images/ and optionally molecules/)")
    src.add_argument("--index", help="a saved CloomeIndex folder (see --save_index)")
    p.add_argument("--model", default=None,
                   help="model for encoding queries (default: the one that made the embeddings)")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--smiles", nargs="+", help="query molecules (molecule -> image search)")
    q.add_argument("--smiles_file", help="text/CSV file of query SMILES (column 'smiles' or one per line)")
    q.add_argument("--images", nargs="+", help="query sites (paths the processor reads, e.g. .npz)")
    p.add_argument("--similar", action="store_true", help="with --images: image -> image instead of image -> molecule")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--index_type", choices=["flat", "ivf", "hnsw"], default="flat",
                   help="image index type when building from --embeddings (approximate for >= 1M rows)")
    p.add_argument("--report_recall", action="store_true", help="print recall@k of the approximate index vs exact")
    p.add_argument("--save_index", default=None, help="save the built index here for reuse with --index")
    p.add_argument("--output", default=None, help="write results to .csv or .parquet (default: print)")
    return p


def search_main(argv=None):
    import pandas as pd

    from .search import CloomeIndex

    args = search_parser().parse_args(argv)
    if args.embeddings:
        import json

        info_path = os.path.join(args.embeddings, "embedding_info.json")
        model_id = args.model
        if model_id is None and os.path.isfile(info_path):
            with open(info_path) as f:
                model_id = json.load(f).get("model_id")
        molecules = os.path.join(args.embeddings, "molecules")
        index = CloomeIndex.from_datasets(os.path.join(args.embeddings, "images"),
                                          molecules if os.path.isdir(molecules) else None,
                                          model_id=model_id, index_type=args.index_type)
    else:
        index = CloomeIndex.load(args.index)
        index.model_id = args.model or index.model_id
    if args.save_index:
        index.save(args.save_index)
    queries = args.smiles or args.smiles_file or args.images
    if not queries:
        return None
    if index.model_id is None:
        raise ValueError("no model to encode the queries with: pass --model")
    from .processing_cloome import load_model_and_processor

    index.model, index.processor = load_model_and_processor(index.model_id)
    if args.smiles_file and args.smiles_file.endswith(".csv"):
        smiles = pd.read_csv(args.smiles_file)["smiles"].tolist()
    elif args.smiles_file:
        with open(args.smiles_file) as f:
            smiles = [line.strip() for line in f if line.strip()]
    else:
        smiles = args.smiles
    if smiles:
        q = index.encode_molecules(smiles)
        result = index.search_images(smiles=smiles, k=args.k, query_embeds=q)
    else:
        q = index.encode_images(args.images)
        result = (index.search_similar_images if args.similar else index.search_molecules)(query_embeds=q, k=args.k)
        result.insert(3, "query_image", [args.images[i] for i in result["query_index"]])
    if args.report_recall:
        target = index.images if smiles or args.similar else index.molecules
        print(f"recall@{args.k} vs exact search: {target.recall_at_k(q, args.k):.4f}", file=sys.stderr)
    if args.output:
        (result.to_parquet if args.output.endswith(".parquet") else result.to_csv)(args.output, index=False)
    else:
        with pd.option_context("display.max_rows", None, "display.width", 200):
            print(result.to_string(index=False))
    return result


def run(argv=None):
    """Dispatch ``argv`` to a sub-command and return what it returns (a DataFrame for ``search``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="cloome", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in ("embed", "search", "convert", "evaluate", "push"):
        # add_help=False: "cloome CMD --help" must reach the command's own parser
        sub.add_parser(name, help=HELP[name], add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in HELP:
        parser.print_help()
        if argv and argv[0] not in ("-h", "--help"):
            parser.exit(2, f"cloome: unknown command {argv[0]!r}\n")
        return None
    command, rest = argv[0], argv[1:]
    if command == "search":
        return search_main(rest)
    return script_main(command)(rest)


def main(argv=None) -> int:
    """Console entry point: run the command and exit 0 (its result is printed or written, not returned)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
