"""Command line: ``python -m cloome_hf.data {prepare,synthetic} ...`` (also ``scripts/prepare_dataset.py``).

Examples::

    # Bray 2017 pre-processed npz -> Parquet shards, 8 processes, skip unreadable sites (listed in the report)
    python -m cloome_hf.data prepare --layout bray_npz --index index.csv --root npzs/ --output_dir bray_parquet \\
        --num_proc 8 --errors skip
    # JUMP cpg0016
    python -m cloome_hf.data prepare --layout jump --load_data load_data.csv --wells well.csv.gz \\
        --compounds compound.csv.gz --root /data/cpg0016 --output_dir jump_parquet
    # synthetic Cell Painting, as Parquet shards or in a real on-disk layout
    python -m cloome_hf.data synthetic --output_dir syn --num_molecules 200 --layout parquet
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cloome_hf.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prepare", help="convert a Bray npz / raw TIFF / JUMP source into Parquet shards")
    pr.add_argument("--layout", choices=["auto", "bray_npz", "tiff", "jump"], default="auto")
    pr.add_argument("--index", help="index CSV (Bray npz / raw TIFF layouts)")
    pr.add_argument("--root", help="npz folder, TIFF root folder, or JUMP image root")
    pr.add_argument("--load_data", help="JUMP load_data CSV")
    pr.add_argument("--compounds", help="JUMP compound table (Metadata_JCP2022 / InChIKey -> SMILES)")
    pr.add_argument("--wells", help="JUMP well table (plate, well -> Metadata_JCP2022) when load_data lacks it")
    pr.add_argument("--output_dir", required=True)
    pr.add_argument("--split", default="train")
    pr.add_argument("--shard_size", type=int, default=500, help="sites per Parquet shard")
    pr.add_argument("--num_proc", type=int, default=1)
    pr.add_argument("--errors", choices=["raise", "skip"], default="skip",
                    help="unreadable sites / invalid SMILES: abort, or leave out and list in the report")
    pr.add_argument("--compression", default="zstd")
    pr.add_argument("--max_shards", type=int, default=None, help="write at most this many new shards, then stop")
    sy = sub.add_parser("synthetic", help="write synthetic Cell Painting (Parquet or a real on-disk layout)")
    sy.add_argument("--output_dir", required=True)
    sy.add_argument("--layout", choices=["parquet", "bray_npz", "tiff", "jump"], default="parquet")
    sy.add_argument("--num_molecules", type=int, default=200)
    sy.add_argument("--sites_per_molecule", type=int, default=4)
    sy.add_argument("--num_plates", type=int, default=4)
    sy.add_argument("--image_size", type=int, nargs="+", default=[64], help="H [W]")
    sy.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> dict:
    """Run the command; returns the prepare report (``prepare``) or the written paths (``synthetic``)."""
    args = _parser().parse_args(argv)
    if args.command == "prepare":
        from .prepare import prepare_dataset
        from .sources import open_source

        source = open_source(args.layout, index=args.index, root=args.root, load_data=args.load_data,
                             compounds=args.compounds, wells=args.wells, errors=args.errors)
        report = prepare_dataset(source, args.output_dir, split=args.split, shard_size=args.shard_size,
                                 num_proc=args.num_proc, compression=args.compression, max_shards=args.max_shards)
        print(f"wrote {report['num_written']} sites in {report['shards_done']}/{report['num_shards']} shards "
              f"({report['shards_reused']} kept from an earlier run) to {args.output_dir}; "
              f"skipped {report['num_skipped']}", file=sys.stderr)
        for s in report["skipped"][:20]:
            print(f"  skipped row {s['row']} ({s['sample_key']}): {s['reason']}", file=sys.stderr)
        if report["num_skipped"] > 20:
            print(f"  ... see {os.path.join(args.output_dir, 'prepare_report.json')}", file=sys.stderr)
        return report
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
