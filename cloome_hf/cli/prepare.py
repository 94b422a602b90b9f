"""``cloome prepare``: Bray npz / raw TIFF / JUMP data -> Parquet shards (= ``python -m cloome_hf.data prepare``).

    cloome prepare --kind bray_npz --index index.csv --root npzs/ --output_dir bray_parquet --num_proc 8
    cloome prepare --kind jump --load_data $P/load_data_with_illum.parquet --wells well.csv.gz \
        --compounds compound.csv.gz --plates plate.csv.gz --output_dir jump_parquet

``--kind`` (old spelling ``--layout``) is the input's kind, as ``load_cell_painting(kind=...)`` and
``open_source(kind)`` name it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ..data.prepare import DEFAULT_MAX_SKIPPED_FRACTION
from ..data.schema_docs import PREPARE_EPILOG
from .arguments import OutputArguments, SiteTableArguments, arg, parse_command, table_arguments

DESCRIPTION = ("Convert a Cell Painting source (a TIFF folder, Bray npz files or a CellProfiler / JUMP LoadData "
               "table) into Parquet shards that cloome train, embed and evaluate read with --dataset.")


@dataclass
class PrepareArguments:
    _argument_group_name = "prepare"

    kind: str = arg("auto", "the input's kind: Bray npz, a TIFF folder, or a CellProfiler / JUMP LoadData table; auto "
                            "guesses from the table", choices=["auto", "bray_npz", "tiff", "jump"], old=("--layout",))
    index: str | None = arg(None, "index CSV (Bray npz / raw TIFF kinds); see the schema below. Without it, --kind "
                                  "tiff infers one from the file names under --root (needs --wells)")
    channels: str | None = arg(None, "inferred TIFF index only: channel tokens of the file names, e.g. "
                                     "1=Hoechst,2=ERSyto,3=ERSytoBleed,4=Ph_golgi,5=Mito (names or DNA, ER, RNA, AGP)")
    load_data: str | None = arg(None, "CellProfiler LoadData table (CSV, CSV.gz or Parquet; path or URL)")
    extra_channels: list[str] = arg([], "e.g. Brightfield (ignored unless named)")
    split: str = arg("train", "the split the shards are written as")
    shard_size: int = arg(500, "sites per Parquet shard")
    num_proc: int = arg(1, "worker processes")
    errors: str = arg("skip", "unreadable sites / invalid SMILES: abort, or leave out and list in the report",
                      choices=["raise", "skip"])
    max_skipped_fraction: float = arg(DEFAULT_MAX_SKIPPED_FRACTION, "fail (exit 2, naming the report and the "
                                      "commonest reason) when more than this share of the sites is skipped; writing "
                                      "no site always fails")
    compression: str = arg("zstd", "Parquet compression")
    max_shards: int | None = arg(None, "write at most this many new shards, then stop")
    process_index: int | None = arg(None, "this process's index among --num_processes (default: RANK, as "
                                          "accelerate launch sets)")
    num_processes: int | None = arg(None, "processes/machines sharing the output_dir (default: WORLD_SIZE, else 1)")


ARGUMENTS = (PrepareArguments, SiteTableArguments, OutputArguments)


def parse_arguments(argv=None, prog: str | None = None):
    return parse_command("prepare", ARGUMENTS, argv, required=("output_dir",), description=DESCRIPTION,
                         epilog=PREPARE_EPILOG, prog=prog or "cloome prepare")


def write_inferred_index(args) -> str:
    """Infer the index of ``--root``'s TIFFs (:mod:`cloome_hf.data.infer_index`), write it to
    ``OUTPUT_DIR/inferred_index.csv`` for the user to check, and return its path."""
    from ..data.infer_index import infer_tiff_index, parse_channel_map

    if args.root is None:
        raise ValueError("--kind tiff without --index infers the index from the file names under --root: give "
                         "--root DIR (and --wells, the molecule of each well)")
    if args.wells is None:
        raise ValueError("an index inferred from file names needs the molecule of each well: give --wells TABLE "
                         "(CSV with plate, well, smiles columns)")
    from ..safe_io import atomic_write_text

    inferred = infer_tiff_index(args.root, args.wells, parse_channel_map(args.channels))
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "inferred_index.csv")
    atomic_write_text(path, inferred.to_csv(index=False))
    unlisted = int((inferred["SMILES"] == "").sum())
    print(f"inferred an index of {len(inferred)} sites ({inferred.PLATE_ID.nunique()} plates, "
          f"{inferred.groupby(['PLATE_ID', 'WELL_POSITION']).ngroups} wells) from the file names under {args.root}; "
          f"wrote it to {path} (check it; pass it as --index to change it)"
          + (f"; {unlisted} sites are in wells --wells does not list, and are skipped" if unlisted else ""),
          file=sys.stderr)
    return path


def run_prepare(args) -> dict:
    """``prepare`` with parsed arguments; prints what it wrote and returns the report. Raises
    :class:`~cloome_hf.data.prepare.IncompleteOutputError` when it wrote no site or skipped too many."""
    from ..data.prepare import check_written, prepare_dataset, report_name
    from ..data.source_kinds import open_source

    table = table_arguments(args)
    index = args.index
    if args.kind in ("bray_npz", "tiff") and args.index is not None and args.wells is not None:
        raise ValueError(f"--wells is the JUMP well table, or the molecules of an inferred TIFF index; with "
                         f"--index {args.index} the molecules come from its SMILES column: drop --wells")
    if args.channels is not None and not (args.kind == "tiff" and args.index is None):
        raise ValueError("--channels names the channel tokens of an inferred TIFF index (--kind tiff without "
                         "--index)")
    if args.kind == "tiff" and args.index is None:
        index = write_inferred_index(args)
        table["wells"] = None
    options = dict(table.pop("source_options"))
    if args.extra_channels:
        options["extra_channels"] = args.extra_channels
    # options of the LoadData layout reach open_source only when given: it refuses them for other layouts
    source = open_source(args.kind, index=index, load_data=args.load_data, errors=args.errors,
                         **table, **options)
    report = prepare_dataset(source, args.output_dir, split=args.split, shard_size=args.shard_size,
                             num_proc=args.num_proc, compression=args.compression, max_shards=args.max_shards,
                             process_index=args.process_index, num_processes=args.num_processes)
    report_path = os.path.join(args.output_dir, report_name(args.split))
    print(f"wrote {report['num_written']} sites in {report['shards_done']}/{report['num_shards']} shards "
          f"({report['shards_reused']} kept from an earlier run) to {args.output_dir}; "
          f"skipped {report['num_skipped']} (listed in {report_path}); perturbation types "
          f"{report['perturbation_types']}, {report['num_without_structure']} sites without a structure "
          "(embedded, not trained on)", file=sys.stderr)
    for s in report["skipped"][:5]:
        print(f"  skipped row {s['row']} ({s['sample_key']}): {s['reason']}", file=sys.stderr)
    if report["num_skipped"] > 5:
        print(f"  ... {report['num_skipped'] - 5} more in {report_path}", file=sys.stderr)
    check_written(report, report_path, args.max_skipped_fraction)
    return report


def main(argv=None) -> dict:
    return run_prepare(parse_arguments(argv))


__all__ = ["ARGUMENTS", "PrepareArguments", "main", "parse_arguments", "run_prepare", "write_inferred_index"]
