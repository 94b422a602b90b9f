"""``cloome search``: chemical <-> image search over an embedding store or a saved index.

    cloome search --embeddings embeddings/ --smiles "CCO" --k 5 --output hits.csv     # molecule -> images
    cloome search --embeddings embeddings/ --images a.npz --k 5                       # image -> molecules
    cloome search --index index/ --images a.npz --similar                             # image -> images

Queries are encoded with the model that made the embeddings, at the revision recorded in the store
(``--model`` overrides it).
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloome search", description=(
        "Query CLOOME embeddings: SMILES -> images (--smiles), image -> molecules (--images), image -> images "
        "(--images --similar). Results: one row per (query, hit) with score and metadata."))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--embeddings", help="'cloome embed' output folder (images/ and optionally molecules/) or a Hub "
                     "dataset id holding one (owner/name or owner/name@revision)")
    src.add_argument("--index", help="a saved CloomeIndex folder (see --save_index)")
    p.add_argument("--model", default=None,
                   help="model for encoding queries (default: the one, at the revision, that made the embeddings)")
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


def _query_smiles(args) -> list[str] | None:
    from ..data.remote import TABLE_SUFFIXES, read_table

    if args.smiles_file and args.smiles_file.lower().endswith(TABLE_SUFFIXES):
        table, where = read_table(args.smiles_file, "query SMILES")
        if "smiles" not in table.columns:
            raise ValueError(f"--smiles_file {where} has no 'smiles' column (has {list(table.columns)})")
        return table["smiles"].tolist()
    if args.smiles_file:
        with open(args.smiles_file, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return args.smiles


def main(argv=None):

    from ..inference.search import CloomeIndex

    args = build_parser().parse_args(argv)
    if args.embeddings:
        index = CloomeIndex.from_store(args.embeddings, model_id=args.model, index_type=args.index_type)
    else:
        index = CloomeIndex.load(args.index)
        if args.model:
            index.model_id, index.revision = args.model, None
    if args.save_index:
        index.save(args.save_index)
    if not (args.smiles or args.smiles_file or args.images):
        return None
    index.load_encoder()
    smiles = _query_smiles(args)
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
    print_top_hits(result, shown=None if not args.output else TOP_HITS_SHOWN)
    if args.output:
        print(f"wrote {len(result)} hits ({result['query_index'].nunique()} queries x top {args.k}) to "
              f"{args.output}", file=sys.stderr)
    return result


#: Hits per query printed when the results also go to --output.
TOP_HITS_SHOWN = 5


def print_top_hits(result, shown: int | None) -> None:
    """The hits as a table on stdout: all of them, or the first ``shown`` of each query (the file has all)."""
    import pandas as pd

    table = result if shown is None else result[result["rank"] < shown]
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 40):
        print(table.drop(columns=[c for c in ("embedding",) if c in table.columns]).to_string(index=False))
    if shown is not None and len(table) < len(result):
        print(f"(top {shown} of each query shown)")
