"""``cloome search``: chemical <-> image search over an embedding store or a saved index.

    cloome search --embeddings embeddings/ --smiles "CCO" --k 5 --output hits.csv     # molecule -> images
    cloome search --embeddings embeddings/ --images a.npz --k 5                       # image -> molecules
    cloome search --index index/ --images a.npz --similar                             # image -> images

Queries are encoded with the model that made the embeddings, at the revision recorded in the store
(``--model`` / ``--revision`` override them).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .arguments import ModelSourceArguments, arg, command_error, parse_command

DESCRIPTION = ("Query CLOOME embeddings: SMILES -> images (--smiles), image -> molecules (--images), image -> images "
               "(--images --similar). Results: one row per (query, hit) with score and metadata.")


@dataclass
class SearchArguments:
    _argument_group_name = "search"

    embeddings: str | None = arg(None, "'cloome embed' output folder (images/ and optionally molecules/) or a Hub "
                                       "dataset id holding one (owner/name or owner/name@revision)")
    index: str | None = arg(None, "a saved CloomeIndex: its folder, or a Hub dataset id owner/name[@revision] "
                                  "holding one (see --save_index)")
    smiles: list[str] | None = arg(None, "query molecules (molecule -> image search)")
    smiles_file: str | None = arg(None, "text/CSV file of query SMILES (column 'smiles' or one per line)")
    images: list[str] | None = arg(None, "query sites (paths the processor reads, e.g. .npz)")
    similar: bool = arg(False, "with --images: image -> image instead of image -> molecule")
    k: int = arg(10, "hits per query")
    index_type: str = arg("flat", "image index type when building from --embeddings (approximate for >= 1M rows)",
                          choices=["flat", "ivf", "hnsw"])
    report_recall: bool = arg(False, "print recall@k of the approximate index vs exact")
    save_index: str | None = arg(None, "save the built index here for reuse with --index")
    output: str | None = arg(None, "write results to .csv or .parquet (default: print)")


#: --model here encodes the queries; by default it is the model (at the revision) that made the embeddings.
ARGUMENTS = (ModelSourceArguments, SearchArguments)


def parse_arguments(argv=None):
    args = parse_command("search", ARGUMENTS, argv, description=DESCRIPTION)
    given = lambda *names: [f"--{n}" for n in names if getattr(args, n) not in (None, [])]  # noqa: E731
    if len(given("embeddings", "index")) != 1:
        command_error("search", "give one of --embeddings and --index" + (
            f", not both ({' '.join(given('embeddings', 'index'))})" if given("embeddings", "index") else ""))
    if len(given("smiles", "smiles_file", "images")) > 1:
        command_error("search", f"give one query option, not {' and '.join(given('smiles', 'smiles_file', 'images'))}")
    if args.revision and not args.model:
        command_error("search", "--revision is the revision of --model: give --model too (the store records "
                      "the revision of the model that made it)")
    return args


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
    from ..inference.store_location import store_folder

    args = parse_arguments(argv)
    if args.embeddings:
        index = CloomeIndex.from_store(args.embeddings, model_id=args.model, index_type=args.index_type)
    else:
        index = CloomeIndex.load(store_folder(args.index, "saved index", "cloome search --save_index"))
    if args.model:
        index.model_id, index.revision = args.model, args.revision
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
