"""Command line: ``python -m cloome_hf.data {prepare,synthetic} ...`` (also ``scripts/prepare_dataset.py``).

Examples::

    # Bray 2017 pre-processed npz -> Parquet shards, 8 processes, skip unreadable sites (listed in the report)
    python -m cloome_hf.data prepare --layout bray_npz --index index.csv --root npzs/ --output_dir bray_parquet \\
        --num_proc 8 --errors skip
    # JUMP cpg0016: one plate straight from the Cell Painting Gallery (anonymous S3), illumination-corrected
    P=s3://cellpainting-gallery/cpg0016-jump/source_4/workspace/load_data_csv/2021_04_26_Batch1/BR00117035
    python -m cloome_hf.data prepare --layout jump --load_data $P/load_data_with_illum.parquet \\
        --wells well.csv.gz --compounds compound.csv.gz --plates plate.csv.gz --output_dir jump_parquet
    # ... a big table over 4 machines x 8 processes (or: accelerate launch -m cloome_hf.data prepare ...)
    python -m cloome_hf.data prepare --layout jump --load_data all_plates.parquet --root /data/mirror \\
        --compounds compound.csv.gz --output_dir jump_parquet --process_index $K --num_processes 4 --num_proc 8
    # synthetic Cell Painting, as Parquet shards or in a real on-disk layout
    python -m cloome_hf.data synthetic --output_dir syn --num_molecules 200 --layout parquet
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .options import add_table_arguments, table_arguments
from .prepare import DEFAULT_MAX_SKIPPED_FRACTION
from .schema_docs import PREPARE_EPILOG


def add_prepare_arguments(pr: argparse.ArgumentParser) -> None:
    """The options of ``prepare`` (``cloome prepare`` and ``python -m cloome_hf.data prepare``)."""
    pr.add_argument("--layout", choices=["auto", "bray_npz", "tiff", "jump"], default="auto",
                    help="the input's layout (the library calls it kind / source_kind): Bray npz, a TIFF folder, "
                    "or a CellProfiler / JUMP LoadData table; auto guesses from the table")
    pr.add_argument("--index", help="index CSV (Bray npz / raw TIFF layouts); see the schema below. Without it, "
                    "--layout tiff infers one from the file names under --root (needs --wells)")
    pr.add_argument("--channels", default=None,
                    help="inferred TIFF index only: channel tokens of the file names, e.g. "
                    "1=Hoechst,2=ERSyto,3=ERSytoBleed,4=Ph_golgi,5=Mito (names or DNA, ER, RNA, AGP)")
    pr.add_argument("--load_data", help="CellProfiler LoadData table (CSV, CSV.gz or Parquet; path or URL)")
    pr.add_argument("--extra_channels", nargs="*", default=[], help="e.g. Brightfield (ignored unless named)")
    add_table_arguments(pr)
    pr.add_argument("--output_dir", required=True)
    pr.add_argument("--split", default="train")
    pr.add_argument("--shard_size", type=int, default=500, help="sites per Parquet shard")
    pr.add_argument("--num_proc", type=int, default=1)
    pr.add_argument("--errors", choices=["raise", "skip"], default="skip",
                    help="unreadable sites / invalid SMILES: abort, or leave out and list in the report")
    pr.add_argument("--max_skipped_fraction", type=float, default=DEFAULT_MAX_SKIPPED_FRACTION,
                    help="fail (exit 2, naming the report and the commonest reason) when more than this share "
                    f"of the sites is skipped (default {DEFAULT_MAX_SKIPPED_FRACTION}); writing no site always fails")
    pr.add_argument("--compression", default="zstd")
    pr.add_argument("--max_shards", type=int, default=None, help="write at most this many new shards, then stop")
    pr.add_argument("--process_index", type=int, default=None,
                    help="this process's index among --num_processes (default: RANK, as accelerate launch sets)")
    pr.add_argument("--num_processes", type=int, default=None,
                    help="processes/machines sharing the output_dir (default: WORLD_SIZE, else 1)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cloome_hf.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prepare", help="convert a Bray npz / raw TIFF / JUMP source into Parquet shards",
                        epilog=PREPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prepare_arguments(pr)
    sy = sub.add_parser("synthetic", help="write synthetic Cell Painting (Parquet or a real on-disk layout)")
    sy.add_argument("--output_dir", required=True)
    sy.add_argument("--layout", choices=["parquet", "bray_npz", "tiff", "jump"], default="parquet")
    sy.add_argument("--num_molecules", type=int, default=200)
    sy.add_argument("--sites_per_molecule", type=int, default=4)
    sy.add_argument("--num_plates", type=int, default=4)
    sy.add_argument("--image_size", type=int, nargs="+", default=[64], help="H [W]")
    sy.add_argument("--seed", type=int, default=0)
    return p


def write_inferred_index(args: argparse.Namespace) -> str:
    """Infer the index of ``--root``'s TIFFs (:mod:`cloome_hf.data.infer_index`), write it to
    ``OUTPUT_DIR/inferred_index.csv`` for the user to check, and return its path."""
    from ..safe_io import atomic_write_text
    from .infer_index import infer_tiff_index, parse_channel_map

    if args.root is None:
        raise ValueError("--layout tiff without --index infers the index from the file names under --root: give "
                         "--root DIR (and --wells, the molecule of each well)")
    if args.wells is None:
        raise ValueError("an index inferred from file names needs the molecule of each well: give --wells TABLE "
                         "(CSV with plate, well, smiles columns)")
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


def run_prepare(args: argparse.Namespace) -> dict:
    """``prepare`` with parsed arguments; prints what it wrote and returns the report. Raises
    :class:`~cloome_hf.data.prepare.IncompleteOutputError` when it wrote no site or skipped too many."""
    from .prepare import check_written, prepare_dataset, report_name
    from .source_kinds import open_source

    table = table_arguments(args)
    index = args.index
    if args.layout in ("bray_npz", "tiff") and args.index is not None and args.wells is not None:
        raise ValueError(f"--wells is the JUMP well table, or the molecules of an inferred TIFF index; with "
                         f"--index {args.index} the molecules come from its SMILES column: drop --wells")
    if args.channels is not None and not (args.layout == "tiff" and args.index is None):
        raise ValueError("--channels names the channel tokens of an inferred TIFF index (--layout tiff without "
                         "--index)")
    if args.layout == "tiff" and args.index is None:
        index = write_inferred_index(args)
        table["wells"] = None
    options = dict(table.pop("source_options"))
    if args.extra_channels:
        options["extra_channels"] = args.extra_channels
    # options of the LoadData layout reach open_source only when given: it refuses them for other layouts
    source = open_source(args.layout, index=index, load_data=args.load_data, errors=args.errors,
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
    """Run the command; returns the prepare report (``prepare``) or the written paths (``synthetic``)."""
    args = _parser().parse_args(argv)
    if args.command == "prepare":
        return run_prepare(args)
    size = tuple(args.image_size) if len(args.image_size) == 2 else args.image_size[0]
    if args.layout == "parquet":
        from .synthetic import make_synthetic_dataset

        ds = make_synthetic_dataset(args.num_molecules, args.sites_per_molecule, args.num_plates, size, args.seed)
        os.makedirs(os.path.join(args.output_dir, "data"), exist_ok=True)
        path = os.path.join(args.output_dir, "data", "train-00000-of-00001.parquet")
        ds.to_parquet(path)
        out = {"parquet": path}
    else:
        from .synthetic import write_synthetic_layout

        out = write_synthetic_layout(args.output_dir, args.layout, args.num_molecules, args.sites_per_molecule,
                                     args.num_plates, size, args.seed)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
