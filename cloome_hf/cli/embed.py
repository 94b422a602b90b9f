"""``cloome embed``: a Cell Painting dataset (and optionally a molecule table) -> a Parquet embedding store.

    cloome embed --model DIR_OR_HUB_ID --dataset DATASET --output_dir OUT [--molecules library.csv] [--bf16]
    accelerate launch -m cloome_hf.cli embed ...            # every process takes its share of shards
    cloome embed --model DIR --dataset s3://.../load_data_with_illum.parquet \
        --wells well.csv.gz --compounds compound.csv.gz --output_dir OUT     # a JUMP plate, no prepare step

``--dataset``: anything ``load_cell_painting`` reads ('synthetic', a prepared or save_to_disk folder, Parquet
shards, a Hub dataset id, a raw index / load_data table, local or a URL); ``--split`` picks a split. A raw
table is read shard by shard, straight from its files (illumination-corrected, with the table options of
``cloome prepare``: ``--root --compounds --wells --plates --illumination --storage_options``): only the
missing shards' sites are read on a rerun, each process reads only its own shards. The store (see
:mod:`cloome_hf.inference.store`) is readable by ``load_dataset(OUT, "images")`` / ``load_dataset(OUT,
"molecules")`` and by ``CloomeIndex.from_store(OUT)``. Image rows carry ``sample_key, plate, well, site,
inchikey, smiles``, ``perturbation_type`` when the dataset has it (plus ``--keep_columns``) and ``embedding``;
molecule rows the table's columns and ``embedding``. ``--thumbnails`` also stores a small picture of each site
(``thumbnails/``) for ``cloome serve``. A rerun after an interruption computes only the missing
shards; a rerun with other settings (a changed table, or another model or changed weights at the same path)
is refused, naming them; ``--overwrite_output_dir`` replaces the store instead. A store is created only in a
new or empty folder, and the main process holds the folder's lock (``.cloome.lock``) while embedding.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from ..inference.thumbnails import DEFAULT_THUMBNAIL_SIZE
from .arguments import (DatasetSplitArguments, ModelSourceArguments, ResumableOutputArguments, SiteTableArguments,
                        arg, parse_command, table_arguments)


@dataclass
class EmbedArguments:
    _argument_group_name = "embedding"

    molecules: str | None = arg(None, "molecule table (CSV or Parquet with a 'smiles' column)")
    batch_size: int = arg(64, "sites (or molecules) per forward pass")
    num_workers: int = arg(0, "DataLoader workers decoding the sites")
    shard_size: int = arg(4096, "rows per output shard (unit of resumption)")
    bf16: bool = arg(False, "run the encoders under bfloat16 autocast")
    backend: str = arg("torch", "image encoder: the torch model, ONNX Runtime (fp32), int8 torch.ao (the fastest on a "
                                "CPU; cloome_resnet50 towers), or int8 ONNX Runtime; int8 is calibrated on the "
                                "dataset's sites; all but torch are checked against fp32 on held-out sites first and "
                                "refused (no store written) below cosine 0.999 per site or top-10 overlap 0.95",
                       choices=["torch", "onnx", "int8", "onnx-int8"])
    calibration_sites: int = arg(32, "--backend int8/onnx-int8: sites it is calibrated on")
    check_sites: int = arg(32, "--backend onnx/int8/onnx-int8: held-out sites it is checked on against fp32")
    embedding_dtype: str = arg("float32", "dtype of the stored embeddings", choices=["float32", "float16"])
    features: str = arg("embedding", "'backbone': each site's image-tower features before the projection head (a "
                                     "cache for `cloome train --image_features`), recorded with a digest of the "
                                     "tower and its preprocessing", choices=["embedding", "backbone"])
    thumbnails: int | None = arg(None, "also store a small picture of each site (longest side PIXELS; "
                                       f"--thumbnails alone: {DEFAULT_THUMBNAIL_SIZE}) for `cloome serve`, which then "
                                       "need not open the raw images", nargs="?", const=DEFAULT_THUMBNAIL_SIZE,
                                 metavar="PIXELS")
    keep_columns: list[str] = arg([], "extra dataset columns to copy to the output")


ARGUMENTS = (ModelSourceArguments, DatasetSplitArguments, SiteTableArguments, ResumableOutputArguments,
             EmbedArguments)


def parse_arguments(argv=None):
    return parse_command("embed", ARGUMENTS, argv, required=("model", "output_dir"), defaults={"split": "train"},
                         description=__doc__)


def load_molecule_table(path: str):
    """A molecule library: CSV or Parquet with a ``smiles`` column (and optionally ``concentration``, uM, for a
    dose-conditioned model), duplicate rows of one molecule (at one dose) dropped."""
    from ..data.remote import read_table

    table, _ = read_table(path, "molecule", as_text=False)
    if "smiles" not in table.columns:
        raise ValueError(f"molecule table {path} has no 'smiles' column (has {list(table.columns)})")
    from ..data.schema import CONCENTRATION

    key = ["smiles", CONCENTRATION] if CONCENTRATION in table.columns else ["smiles"]
    return table.drop_duplicates(key).reset_index(drop=True)


def _settings(args, model, processor, sites, molecules) -> dict[str, Any]:
    """What determines the output: a rerun into the same folder must match this exactly."""
    import cloome_hf

    from ..output_folder import dataset_digest
    from ..train.checkpoint import parameter_digest

    out = {
        "model_id": str(args.model), "revision": args.revision, "model_weights": parameter_digest(model),
        "processor": processor.to_dict(),
        "embedding_dtype": args.embedding_dtype, "bf16": bool(args.bf16), "shard_size": args.shard_size,
        "dataset": args.dataset, "split": args.split if args.dataset else None, "molecules": args.molecules,
        "max_samples": args.max_sites, "keep_columns": list(args.keep_columns),
        "cloome_hf_version": cloome_hf.__version__,
    }
    # A raw table's shards are its rows: a changed table (or compound join) must not be resumed into. The
    # storage options say how to reach the files, not which (and may hold credentials): not recorded.
    table = table_arguments(args)
    recorded = {k: table[k] for k in ("root", "compounds", "wells") if table[k] is not None}
    recorded.update({k: v for k, v in table["source_options"].items() if k in ("plates", "illumination")})
    if recorded:
        out["table_options"] = recorded
    if sites is not None:
        out["dataset_digest"] = dataset_digest(sites)
    if args.thumbnails:  # recorded only when asked for: stores made before thumbnails existed still resume
        out["thumbnails"] = args.thumbnails
    if args.features == "backbone":  # the tower alone determines the features: heads may differ between runs
        from ..vision_towers.features import tower_identity

        del out["model_weights"]
        out.update(features="backbone", tower=tower_identity(model, processor.image_processor))
    if molecules is not None:
        out["molecules_digest"] = dataset_digest(molecules)
    return out


def _open_sites(args):
    """``--dataset`` as a ``SiteSource`` (a raw table, whose images are read per output shard) or a dataset."""
    from ..data import load_cell_painting
    from ..data.source_kinds import site_source_of

    table = table_arguments(args)
    sites = site_source_of(args.dataset, **table)
    if sites is None:
        return load_cell_painting(args.dataset, split=args.split, **table)  # refuses table options
    if args.split != "train":
        raise ValueError(f"{args.dataset} is a site table with the single split 'train', not {args.split!r}")
    return sites


def rows_written(folder: str) -> int:
    """Rows in the Parquet shards of a store part (``OUT/images`` or ``OUT/molecules``)."""
    import glob

    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob(os.path.join(folder, "*.parquet")))


def report_written(args) -> None:
    """Say what the store holds; refuse (exit 2) a store part that was asked for and holds no row."""
    import sys

    from ..data.prepare import IncompleteOutputError

    parts = [("images", args.dataset), ("molecules", args.molecules)]
    counts = {name: rows_written(os.path.join(args.output_dir, name)) for name, given in parts if given}
    print(f"wrote {', '.join(f'{n} {name} rows to {os.path.join(args.output_dir, name)}' for name, n in counts.items())}"
          f" (settings in {os.path.join(args.output_dir, 'embedding_info.json')})", file=sys.stderr)
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        given = dict(parts)
        raise IncompleteOutputError(
            f"wrote 0 {' and 0 '.join(empty)} rows: {', '.join(f'{given[e]!r} holds no rows' for e in empty)} "
            f"(see {os.path.join(args.output_dir, 'embedding_info.json')})",
            "check --dataset / --split / --max_sites, or the molecule table's rows")


def _image_backend(args, model, processor, sites):
    """``--backend``'s image encoder (``None``: the model) and its check against fp32 on held-out sites, made
    before the store is: a backend that misses its bounds raises and nothing is written."""
    if args.backend == "torch" or sites is None:
        return None, None
    if args.features != "embedding":
        raise ValueError(f"--backend {args.backend} exports the embedding model; --features {args.features} runs "
                         "the torch tower: drop one of them")
    if args.bf16:
        raise ValueError(f"--bf16 is autocast of the torch model; --backend {args.backend} runs its own graph: "
                         "drop one of them")
    import atexit
    import shutil
    import tempfile

    from ..data.sources import SiteSource
    from ..inference.backends import prepare_backend

    workdir = tempfile.mkdtemp(prefix="cloome-embed-backend-")  # the exported graphs, for this run only
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    sample = sites
    if isinstance(sites, SiteSource):  # a raw table: its first sites, read once
        from ..data import load_cell_painting

        wanted = min(len(sites), args.calibration_sites + args.check_sites)
        sample = load_cell_painting(sites, split="train", rows=range(wanted), cache_dir=workdir)
    return prepare_backend(args.backend, model, processor, sample, calibration_sites=args.calibration_sites,
                           check_sites=args.check_sites, workdir=workdir)


def main(argv=None) -> str:
    args = parse_arguments(argv)
    if args.dataset is None and args.molecules is None:
        raise ValueError("nothing to embed: give --dataset and/or --molecules")
    from ..data.loading import refuse_missing_local_path

    refuse_missing_local_path(args.model, "model")
    import torch
    from accelerate import Accelerator

    from ..inference import store
    from ..processing_cloome import load_model_and_processor
    from ..safe_io import OutputLock

    accelerator = Accelerator()
    model, processor = load_model_and_processor(args.model, revision=args.revision)
    model.to(accelerator.device)
    sites = _open_sites(args) if args.dataset is not None else None
    molecules = load_molecule_table(args.molecules) if args.molecules is not None else None
    settings = _settings(args, model, processor, sites, molecules)
    settings["model_info"] = {"commit_hash": getattr(model.config, "_commit_hash", None),
                              "projection_dim": model.config.projection_dim}
    settings["backend"] = args.backend  # a resume with another backend is refused as a changed setting
    image_encoder, settings["model_info"]["backend_check"] = _image_backend(args, model, processor, sites)
    main_process = accelerator.is_main_process
    with OutputLock(args.output_dir, "cloome embed") if main_process else contextlib.nullcontext():
        if main_process:
            if args.overwrite_output_dir:
                store.remove_store(args.output_dir)
            store.check_or_write_info(args.output_dir, settings, write=True)
        accelerator.wait_for_everyone()
        store.check_or_write_info(args.output_dir, settings, write=False)
        common = dict(accelerator=accelerator, shard_size=args.shard_size, batch_size=args.batch_size,
                      dtype=args.embedding_dtype, autocast_dtype=torch.bfloat16 if args.bf16 else None)
        if sites is not None:
            store.embed_images_to_store(sites, model, processor, os.path.join(args.output_dir, "images"),
                                        keep_columns=args.keep_columns, num_workers=args.num_workers,
                                        max_rows=args.max_sites, image_encoder=image_encoder,
                                        features=args.features, thumbnails=args.thumbnails, **common)
        if molecules is not None:
            store.embed_molecules_to_store(molecules, model, processor, os.path.join(args.output_dir, "molecules"),
                                           **common)
        accelerator.wait_for_everyone()
        if main_process:
            store.write_store_readme(args.output_dir)
    if main_process:
        report_written(args)
    return args.output_dir
