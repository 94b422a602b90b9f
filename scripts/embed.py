"""Embed a Cell Painting dataset (and optionally a molecule table) with a CLOOME model.

    accelerate launch scripts/embed.py --model DIR_OR_HUB_ID --dataset DATASET --output_dir OUT \
        [--molecules library.csv] [--bf16] [--embedding_dtype float16]

Rows are cut into shards of ``--shard_size``; shard i is computed by process ``i % num_processes`` and written
atomically to ``OUT/images/shard-XXXXX.parquet`` (``OUT/molecules/...`` for the molecule table), so a rerun
after an interruption keeps the finished shards and computes only the missing ones. ``OUT/embedding_info.json``
records the model id/revision and the processor settings; a rerun with different settings is refused.

Output: a Parquet dataset readable by ``load_dataset(OUT, "images")`` / ``load_dataset(OUT, "molecules")`` and by
``CloomeIndex.from_datasets(OUT + "/images", OUT + "/molecules")``. Image rows carry ``sample_key, plate, well,
site, inchikey, smiles`` (plus ``--keep_columns``) and ``embedding``; molecule rows ``smiles, inchikey`` plus the
table's other columns and ``embedding``.

``--dataset``: a ``save_to_disk`` folder, a Parquet file/folder, or a Hub dataset id (``--split`` picks a split),
in the common Cell Painting schema of ``cloome_hf.data.schema``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np


INFO_FILE = "embedding_info.json"
IMAGE_METADATA = ("sample_key", "plate", "well", "site", "inchikey", "smiles")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloome embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder or Hub id (model + processor saved together)")
    p.add_argument("--revision", default=None, help="Hub revision of --model")
    p.add_argument("--dataset", default=None, help="image dataset: save_to_disk folder, Parquet file/folder, Hub id")
    p.add_argument("--split", default="train", help="split of a DatasetDict / Hub dataset")
    p.add_argument("--molecules", default=None, help="molecule table (CSV or Parquet with a 'smiles' column)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--shard_size", type=int, default=4096, help="rows per output shard (unit of resumption)")
    p.add_argument("--bf16", action="store_true", help="run the encoders under bfloat16 autocast")
    p.add_argument("--embedding_dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--keep_columns", nargs="*", default=[], help="extra dataset columns to copy to the output")
    p.add_argument("--max_samples", type=int, default=None, help="embed only the first N rows (smoke tests)")
    return p


def _load_images_dataset(spec: str, split: str):
    import datasets

    if os.path.isdir(spec) and (os.path.isfile(os.path.join(spec, "dataset_info.json"))
                                or os.path.isfile(os.path.join(spec, "dataset_dict.json"))):
        ds = datasets.load_from_disk(spec)
    elif os.path.isfile(spec) or os.path.isdir(spec):
        files = [spec] if os.path.isfile(spec) else os.path.join(spec, "**", "*.parquet")
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
    else:
        ds = datasets.load_dataset(spec, split=split)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"split {split!r} not in {spec} (has {list(ds)})")
        ds = ds[split]
    return ds


def _load_molecule_table(path: str):
    import pandas as pd

    if not os.path.isfile(path):
        raise ValueError(f"molecule table {path} does not exist")
    table = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
    if "smiles" not in table.columns:
        raise ValueError(f"molecule table {path} has no 'smiles' column (has {list(table.columns)})")
    return table.drop_duplicates("smiles").reset_index(drop=True)


def _settings(args, processor) -> dict[str, Any]:
    """What determines the output: a rerun into the same folder must match this exactly."""
    import cloome_hf

    return {
        "model_id": str(args.model), "revision": args.revision,
        "processor": json.loads(json.dumps(processor.to_dict(), default=str)),
        "embedding_dtype": args.embedding_dtype, "bf16": bool(args.bf16), "shard_size": args.shard_size,
        "dataset": args.dataset, "split": args.split if args.dataset else None, "molecules": args.molecules,
        "max_samples": args.max_samples, "keep_columns": list(args.keep_columns),
        "cloome_hf_version": cloome_hf.__version__,
    }


def _check_or_write_info(output_dir: str, settings: dict, is_main: bool) -> None:
    path = os.path.join(output_dir, INFO_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        changed = sorted(k for k in set(old) | set(settings) if k != "model_info" and old.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{output_dir} holds embeddings made with different settings ({', '.join(changed)}); "
                             "use a new --output_dir")
    elif is_main:
        os.makedirs(output_dir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(settings, f, indent=2)
        os.replace(path + ".tmp", path)


def _write_shard(path: str, columns: dict[str, Any], embeddings: np.ndarray, dtype: str) -> None:
    """Write one shard atomically (tmp file + rename), so a killed run never leaves a half shard behind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = embeddings.astype(np.float16 if dtype == "float16" else np.float32)
    values = pa.array(emb.reshape(-1), type=pa.float16() if dtype == "float16" else pa.float32())
    table = pa.table({**columns, "embedding": pa.FixedSizeListArray.from_arrays(values, emb.shape[1])})
    pq.write_table(table, path + ".tmp")
    os.replace(path + ".tmp", path)


def shard_ranges(num_rows: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, num_rows)) for s in range(0, num_rows, shard_size)]


def embed_images(ds, model, processor, out_dir: str, args, accelerator, autocast_dtype) -> None:
    import torch
    from tqdm.auto import tqdm

    from cloome_hf.data.schema import decode_image
    from cloome_hf.embedding import image_embeddings_from_pixels

    needed = IMAGE_METADATA + ("image", "image_shape") + tuple(args.keep_columns)
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise ValueError(f"dataset {args.dataset} lacks column(s) {missing}; has {ds.column_names}")
    os.makedirs(out_dir, exist_ok=True)
    shards = shard_ranges(len(ds), args.shard_size)
    mine = [i for i in range(len(shards)) if i % accelerator.num_processes == accelerator.process_index]
    todo = [i for i in mine if not os.path.isfile(os.path.join(out_dir, f"shard-{i:05d}.parquet"))]
    rows_todo = sum(shards[i][1] - shards[i][0] for i in todo)
    bar = tqdm(total=rows_todo, desc=f"images (process {accelerator.process_index})", unit="site",
               disable=not accelerator.is_local_main_process)
    meta_cols = list(IMAGE_METADATA) + list(args.keep_columns)
    for i in todo:
        start, stop = shards[i]
        chunks = []
        for b in range(start, stop, args.batch_size):
            batch = ds[b:min(b + args.batch_size, stop)]
            sites = [decode_image(data, shape) for data, shape in zip(batch["image"], batch["image_shape"])]
            pixels = processor(images=sites, return_tensors="pt")["pixel_values"]
            chunks.append(image_embeddings_from_pixels(model, pixels, autocast_dtype))
            bar.update(len(sites))
        meta = ds.select_columns(meta_cols)[start:stop]
        _write_shard(os.path.join(out_dir, f"shard-{i:05d}.parquet"), meta, torch.cat(chunks).numpy(),
                     args.embedding_dtype)
    bar.close()


def embed_molecules(table, model, processor, out_dir: str, args, accelerator, autocast_dtype) -> None:
    import torch
    from tqdm.auto import tqdm

    from cloome_hf.embedding import molecule_embeddings_from_fingerprints

    os.makedirs(out_dir, exist_ok=True)
    shards = shard_ranges(len(table), args.shard_size)
    mine = [i for i in range(len(shards)) if i % accelerator.num_processes == accelerator.process_index]
    for i in tqdm(mine, desc="molecules", disable=not accelerator.is_local_main_process):
        path = os.path.join(out_dir, f"shard-{i:05d}.parquet")
        if os.path.isfile(path):
            continue
        part = table.iloc[shards[i][0]:shards[i][1]]
        fps = torch.from_numpy(processor.featurizer(list(part["smiles"])))  # invalid SMILES -> ValueError naming it
        emb = torch.cat([molecule_embeddings_from_fingerprints(model, fps[s:s + args.batch_size], autocast_dtype)
                         for s in range(0, len(fps), args.batch_size)])
        columns = {c: part[c].tolist() for c in part.columns}
        _write_shard(path, columns, emb.numpy(), args.embedding_dtype)


def _write_readme(output_dir: str) -> None:
    """The ``configs`` metadata that makes ``load_dataset(output_dir, "images")`` work."""
    configs = [c for c in ("images", "molecules") if os.path.isdir(os.path.join(output_dir, c))]
    lines = ["---", "configs:"]
    for c in configs:
        lines += [f"- config_name: {c}", "  data_files:", "  - split: train", f"    path: {c}/shard-*.parquet"]
    lines += ["---", "", "CLOOME embeddings written by `scripts/embed.py`; see `embedding_info.json`.", ""]
    with open(os.path.join(output_dir, "README.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv=None) -> str:
    args = build_parser().parse_args(argv)
    if args.dataset is None and args.molecules is None:
        raise ValueError("nothing to embed: give --dataset and/or --molecules")
    import torch
    from accelerate import Accelerator

    from cloome_hf.processing_cloome import load_model_and_processor

    accelerator = Accelerator()
    model, processor = load_model_and_processor(args.model, revision=args.revision)
    model.to(accelerator.device)
    autocast_dtype = torch.bfloat16 if args.bf16 else None
    settings = _settings(args, processor)
    settings["model_info"] = {"commit_hash": getattr(model.config, "_commit_hash", None),
                              "projection_dim": model.config.projection_dim}
    if accelerator.is_main_process:
        _check_or_write_info(args.output_dir, settings, True)
    accelerator.wait_for_everyone()
    _check_or_write_info(args.output_dir, settings, False)

    if args.dataset is not None:
        ds = _load_images_dataset(args.dataset, args.split)
        if args.max_samples is not None:
            ds = ds.select(range(min(args.max_samples, len(ds))))
        embed_images(ds, model, processor, os.path.join(args.output_dir, "images"), args, accelerator, autocast_dtype)
    if args.molecules is not None:
        table = _load_molecule_table(args.molecules)
        embed_molecules(table, model, processor, os.path.join(args.output_dir, "molecules"), args, accelerator,
                        autocast_dtype)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_readme(args.output_dir)
    return args.output_dir


if __name__ == "__main__":
    main()
