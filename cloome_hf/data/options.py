"""The command-line options of raw site tables, shared by ``cloome prepare`` and ``cloome embed``.

    add_table_arguments(parser)            # --root --compounds --wells --plates --illumination ...
    load_cell_painting(path, **table_arguments(args))

Options left unset are not passed on, so a command given a prepared folder or a Hub id with one of them set
is refused by :func:`~cloome_hf.data.load_cell_painting` / :func:`~cloome_hf.data.open_source` instead of
silently ignoring it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

#: Options of the LoadData reader (``source_options`` of ``load_cell_painting``), as the parsers name them.
LOAD_DATA_OPTIONS = ("plates", "illumination", "storage_options", "read_threads", "retries")
_ILLUMINATION = {"auto": "auto", "true": True, "false": False}


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r} ({err})") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of fsspec options, got {text!r}")
    return value


def add_table_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the options of index / CellProfiler LoadData tables to ``parser`` (as one argument group)."""
    group = parser.add_argument_group("site tables (Bray index, CellProfiler / JUMP load_data)")
    group.add_argument("--root", default=None,
                       help="where the table's files are: the npz / TIFF folder of an index, or a local mirror "
                            "of a load_data table's bucket (s3://bucket/KEY is read from ROOT/KEY)")
    group.add_argument("--compounds", default=None,
                       help="compound table (Metadata_JCP2022 / InChIKey / broad_sample -> SMILES), e.g. "
                            "JUMP's compound.csv.gz; without it the SMILES come from the load_data table")
    group.add_argument("--wells", default=None,
                       help="JUMP well table (plate, well -> Metadata_JCP2022) when load_data lacks it")
    group.add_argument("--plates", default=None,
                       help="JUMP plate table (plate -> Metadata_Batch, Metadata_PlateType)")
    group.add_argument("--illumination", choices=sorted(_ILLUMINATION), default=None,
                       help="divide by the plate's illumination functions (default auto: when the table has "
                            "Illum columns)")
    group.add_argument("--storage_options", type=_json_object, default=None,
                       help='fsspec options as JSON, e.g. \'{"anon": false}\' or \'{"client_kwargs": '
                            '{"endpoint_url": "http://..."}}\' (the Cell Painting Gallery is read anonymously)')
    group.add_argument("--read_threads", type=int, default=None, help="sites read at once per process "
                       "(load_data tables; default 8)")
    group.add_argument("--retries", type=int, default=None,
                       help="retries of transient read errors (load_data tables; default 3)")
    return group


def table_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``root``, ``compounds``, ``wells`` and ``source_options`` (the LoadData options that were given) of
    parsed arguments, as :func:`~cloome_hf.data.load_cell_painting` takes them."""
    options = {name: getattr(args, name) for name in LOAD_DATA_OPTIONS if getattr(args, name) is not None}
    if "illumination" in options:
        options["illumination"] = _ILLUMINATION[options["illumination"]]
    return {"root": args.root, "compounds": args.compounds, "wells": args.wells, "source_options": options}


__all__ = ["LOAD_DATA_OPTIONS", "add_table_arguments", "table_arguments"]
