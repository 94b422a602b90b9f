"""Command line: ``python -m cloome_hf.data {prepare,synthetic} ...`` (also ``scripts/prepare_dataset.py``).

Examples::

    # Bray 2017 pre-processed npz -> Parquet shards, 8 processes, skip unreadable sites (listed in the report)
    python -m cloome_hf.data prepare --kind bray_npz --index index.csv --root npzs/ --output_dir bray_parquet \\
        --num_proc 8 --errors skip
    # JUMP cpg0016: one plate straight from the Cell Painting Gallery (anonymous S3), illumination-corrected
    P=s3://cellpainting-gallery/cpg0016-jump/source_4/workspace/load_data_csv/2021_04_26_Batch1/BR00117035
    python -m cloome_hf.data prepare --kind jump --load_data $P/load_data_with_illum.parquet \\
        --wells well.csv.gz --compounds compound.csv.gz --plates plate.csv.gz --output_dir jump_parquet
    # ... a big table over 4 machines x 8 processes (or: accelerate launch -m cloome_hf.data prepare ...)
    python -m cloome_hf.data prepare --kind jump --load_data all_plates.parquet --root /data/mirror \\
        --compounds compound.csv.gz --output_dir jump_parquet --process_index $K --num_processes 4 --num_proc 8
    # synthetic Cell Painting, as Parquet shards or in a real on-disk layout
    python -m cloome_hf.data synthetic --output_dir syn --synthetic_molecules 200 --kind parquet
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from ..cli.arguments import OutputArguments, SyntheticDataArguments, arg, command_error, parse_command, synthetic_options


@dataclass
class SyntheticLayoutArguments:
    _argument_group_name = "synthetic layout"

    kind: str = arg("parquet", "write Parquet shards, or the sites in a real on-disk layout",
                    choices=["parquet", "bray_npz", "tiff", "jump"], old=("--layout",))
    seed: int = arg(0, "seed of the generator")


SYNTHETIC_ARGUMENTS = (SyntheticDataArguments, SyntheticLayoutArguments, OutputArguments)
#: The old spellings of the synthetic command, before its options were the shared group's.
SYNTHETIC_ALIASES = {"--num_molecules": "--synthetic_molecules", "--sites_per_molecule": "--synthetic_sites_per_molecule",
                     "--num_plates": "--synthetic_plates", "--image_size": "--synthetic_image_size"}


def synthetic(argv=None) -> dict:
    """``python -m cloome_hf.data synthetic``: write synthetic Cell Painting; returns the written paths."""
    args = parse_command("data synthetic", SYNTHETIC_ARGUMENTS, argv, required=("output_dir",),
                         prog="python -m cloome_hf.data synthetic",
                         aliases=SYNTHETIC_ALIASES, description="write synthetic Cell Painting (Parquet or a real "
                         "on-disk layout)")
    options = synthetic_options(args, args.seed)
    if args.kind == "parquet":
        from .synthetic import make_synthetic_dataset

        ds = make_synthetic_dataset(**options)
        os.makedirs(os.path.join(args.output_dir, "data"), exist_ok=True)
        path = os.path.join(args.output_dir, "data", "train-00000-of-00001.parquet")
        ds.to_parquet(path)
        out = {"parquet": path}
    else:
        from .synthetic import write_synthetic_layout

        out = write_synthetic_layout(args.output_dir, args.kind, options["num_molecules"],
                                     options["sites_per_molecule"], options["num_plates"], options["image_size"],
                                     options["seed"])
    print(json.dumps(out))
    return out


def main(argv=None) -> dict:
    """Run ``prepare`` (returns its report, see :mod:`cloome_hf.cli.prepare`) or ``synthetic``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prepare"]:
        from ..cli.prepare import parse_arguments, run_prepare

        return run_prepare(parse_arguments(argv[1:], prog="python -m cloome_hf.data prepare"))
    if argv[:1] == ["synthetic"]:
        return synthetic(argv[1:])
    if argv[:1] in (["-h"], ["--help"]):
        print("usage: python -m cloome_hf.data {prepare,synthetic} ... (COMMAND --help for its options)\n" + __doc__)
        raise SystemExit(0)
    return command_error("data", "choose a command: prepare or synthetic (python -m cloome_hf.data COMMAND --help)")


if __name__ == "__main__":
    main()
