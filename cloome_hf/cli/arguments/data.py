"""The shared group *data source*: the Cell Painting dataset a command reads, and the options of raw site tables
(a Bray index, a CellProfiler / JUMP LoadData table) for ``prepare`` and ``embed``.

    load_cell_painting(args.dataset, split=args.split, **table_arguments(args))

Table options left unset are not passed on, so a command given a prepared folder or a Hub id with one of them set
is refused by :func:`~cloome_hf.data.load_cell_painting` / :func:`~cloome_hf.data.open_source` instead of
silently ignoring it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from .parser import arg


class JsonObject(dict):
    """A JSON object given on the command line (``--storage_options '{"anon": false}'``): refused while parsing,
    as a usage error, when it is not one."""

    def __init__(self, value: Any = ()):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise argparse.ArgumentTypeError(f"not valid JSON: {value!r} ({err})") from err
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"expected a JSON object of fsspec options, got {value!r}")
        super().__init__(value)


@dataclass
class DatasetArguments:
    _argument_group_name = "data source"

    dataset: str | None = arg(None, "'synthetic' (the embedded generator), a folder written by 'cloome prepare' "
                                    "(Parquet shards), a save_to_disk folder, a Hub dataset id in the Cell Painting "
                                    "schema, or a raw index / load_data table (local or a URL)")


@dataclass
class DatasetSplitArguments(DatasetArguments):
    """A dataset read as one split, of which a command may take only the first sites (``embed``, ``evaluate``)."""

    split: str | None = arg(None, "split of --dataset")
    max_sites: int | None = arg(None, "read only the first N sites (smoke tests)", old=("--max_samples",))


#: Options of the LoadData reader (``source_options`` of ``load_cell_painting``), as the parsers name them.
LOAD_DATA_OPTIONS = ("plates", "illumination", "storage_options", "read_threads", "retries")
_ILLUMINATION = {"auto": "auto", "true": True, "false": False}


@dataclass
class SiteTableArguments:
    _argument_group_name = "site tables (Bray index, CellProfiler / JUMP load_data)"

    root: str | None = arg(None, "where the table's files are: the npz / TIFF folder of an index, or a local "
                                 "mirror of a load_data table's bucket (s3://bucket/KEY is read from ROOT/KEY)")
    compounds: str | None = arg(None, "compound table (Metadata_JCP2022 / InChIKey / broad_sample -> SMILES), e.g. "
                                      "JUMP's compound.csv.gz; without it the SMILES come from the load_data table")
    wells: str | None = arg(None, "JUMP well table (plate, well -> Metadata_JCP2022) when load_data lacks it")
    plates: str | None = arg(None, "JUMP plate table (plate -> Metadata_Batch, Metadata_PlateType)")
    illumination: str | None = arg(None, "divide by the plate's illumination functions (default auto: when the "
                                         "table has Illum columns)", choices=sorted(_ILLUMINATION))
    storage_options: JsonObject | None = arg(None, 'fsspec options as JSON, e.g. \'{"anon": false}\' or '
                                            '\'{"client_kwargs": {"endpoint_url": "http://..."}}\' (the Cell '
                                            'Painting Gallery is read anonymously)')
    read_threads: int | None = arg(None, "sites read at once per process (load_data tables; default 8)")
    retries: int | None = arg(None, "retries of transient read errors (load_data tables; default 3)")


def table_arguments(args) -> dict[str, Any]:
    """``root``, ``compounds``, ``wells`` and ``source_options`` (the LoadData options that were given) of
    parsed arguments, as :func:`~cloome_hf.data.load_cell_painting` takes them."""
    options = {name: getattr(args, name) for name in LOAD_DATA_OPTIONS if getattr(args, name) is not None}
    if "illumination" in options:
        options["illumination"] = _ILLUMINATION[options["illumination"]]
    if "storage_options" in options:
        options["storage_options"] = dict(options["storage_options"])
    return {"root": args.root, "compounds": args.compounds, "wells": args.wells, "source_options": options}


__all__ = ["LOAD_DATA_OPTIONS", "DatasetArguments", "DatasetSplitArguments", "SiteTableArguments",
           "table_arguments"]
