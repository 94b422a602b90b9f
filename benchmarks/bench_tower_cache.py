"""The cached tower features at scale: a store of 1M sites x 1,536 fp16 values streamed without being held in RAM.

Run: ``python benchmarks/bench_tower_cache.py [--sites 1000000] [--dim 1536] [--folder DIR]``. Writes the store with
the real shard writer (``cloome_hf.inference.store.write_shard``, as ``cloome embed --features backbone
--embedding_dtype float16`` does), converts it once to Arrow (``MappedFeatures``), then reads one epoch of random
batches the way training does (``rows_of`` + ``gather``), sampling the process's memory every 100 batches.

Prints a table: bytes per site on disk (Parquet store and its Arrow copy), the one-off conversion time, sites/s while
iterating, and the process's anonymous memory (what it holds itself) and resident file pages (the mapped store,
page cache the kernel can drop) at the start and at their peak, against the size of the features. The store is
deleted afterwards unless ``--keep``. Needs about 2 x sites x dim x 2 bytes in ``--folder`` (6.2 GB at the default).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np


def memory() -> dict[str, int]:
    """RssAnon / RssFile of this process, in bytes (Linux)."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                name, amount = line.split()[:2]
                values[name.rstrip(":")] = int(amount) * 1024
    return values


def write_store(folder: str, sites: int, dim: int, shard_size: int) -> None:
    from cloome_hf.inference.store import write_shard

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    block = np.random.default_rng(0).standard_normal((shard_size, dim)).astype(np.float16)
    for shard, start in enumerate(range(0, sites, shard_size)):
        n = min(shard_size, sites - start)
        keys = [f"PLATE{(start + i) // 2304:04d}-W{(start + i) % 2304:04d}-1" for i in range(n)]
        values = np.roll(block[:n], shard, axis=1)  # distinct per shard, finite, no generation cost
        write_shard(os.path.join(folder, "images", f"shard-{shard:05d}.parquet"), {"sample_key": keys}, values,
                    "float16")


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(folder) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--shard_size", type=int, default=50_000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--folder", default=None, help="where the store goes (default: a new folder in the temp dir)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    from cloome_hf.vision_towers.mapped_features import CACHE_FOLDER, MappedFeatures

    folder = args.folder or tempfile.mkdtemp(prefix="cloome-tower-cache-")
    try:
        start = time.perf_counter()
        write_store(folder, args.sites, args.dim, args.shard_size)
        write_s = time.perf_counter() - start
        parquet = folder_bytes(os.path.join(folder, "images"))
        start = time.perf_counter()
        MappedFeatures(folder)  # the one-off conversion
        convert_s = time.perf_counter() - start
        arrow = folder_bytes(os.path.join(folder, CACHE_FOLDER))

        before = memory()
        start = time.perf_counter()
        table = MappedFeatures(folder)
        open_s = time.perf_counter() - start
        opened = memory()
        keys = table.sorted_keys  # fixed-width bytes, as the batch's sample keys arrive
        order = np.random.default_rng(0).permutation(len(table))
        peak = dict(opened)
        checksum = 0.0
        start = time.perf_counter()
        for i, first in enumerate(range(0, len(order), args.batch_size)):
            batch_keys = [k.decode() for k in keys[order[first:first + args.batch_size]]]
            checksum += float(table.gather(table.rows_of(batch_keys))[:, 0].sum())
            if i % 100 == 0:
                peak = {k: max(v, memory()[k]) for k, v in peak.items()}
        epoch_s = time.perf_counter() - start
        peak = {k: max(v, memory()[k]) for k, v in peak.items()}
        mb = 1 / 2**20
        print(f"{args.sites:,} sites x {args.dim} fp16 features = {table.nbytes * mb:,.0f} MiB; "
              f"writing the store took {write_s:.0f} s (checksum {checksum:.3g})\n")
        print("| quantity | value |\n|---|---|")
        print(f"| Parquet store, bytes per site | {parquet / args.sites:,.0f} |")
        print(f"| Arrow copy (`arrow_cache/`), bytes per site | {arrow / args.sites:,.0f} |")
        print(f"| one-off conversion to Arrow | {convert_s:.1f} s |")
        print(f"| opening the mapped store (key index) | {open_s:.1f} s |")
        print(f"| one epoch, random batches of {args.batch_size} | {epoch_s:.1f} s ({args.sites / epoch_s:,.0f} "
              f"sites/s) |")
        print(f"| anonymous memory: before opening / opened / peak in the epoch | {before['RssAnon'] * mb:,.0f} / "
              f"{opened['RssAnon'] * mb:,.0f} / {peak['RssAnon'] * mb:,.0f} MiB |")
        print(f"| peak anonymous growth over the features' size | "
              f"{(peak['RssAnon'] - before['RssAnon']) / table.nbytes:.3f} |")
        print(f"| resident mapped file pages (page cache, reclaimable): peak | {peak['RssFile'] * mb:,.0f} MiB |")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
