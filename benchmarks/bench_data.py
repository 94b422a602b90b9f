"""Loader throughput: Parquet shards (cloome_hf.data) vs. one ``.npz`` per site read with ``np.load`` (upstream).

Both pipelines end in the same place and run in a ``DataLoader`` with 1 and 2 worker processes; only the storage
and reading differ. Two end points are timed: ``uint8`` batches (the data path proper; the transform then runs
on the accelerator) and ``pixel_values`` batches (the same ``CloomeTrainTransform`` in train mode inside the
workers, whose float32 output also has to cross from the workers to the main process):

* ``npz``: a map-style dataset that opens ``{SAMPLE_KEY}.npz`` and reads ``sample`` (H x W x 5 uint8) per site,
  as the upstream CLOOME ``CellPainting`` dataset does, transforms each sample and batches with
  ``default_collate``;
* ``parquet``: ``prepare`` -> Parquet shards -> ``load_cell_painting`` -> ``build_dataloader`` (reads a batch of
  raw image bytes from the memory-mapped Arrow table, zero-copy decode, unique-molecule batches).

Sites are real: the example Bray 2017 site of ``tests/data/example_site`` (converted to 8 bit by the
processor), rolled / flipped / speckled per site so that no two files are equal. Both stores are read
once before timing (warm page cache for both). Run::

    python benchmarks/bench_data.py --num_sites 96 --batch_size 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def make_sites(folder: str, num_sites: int, seed: int = 0) -> str:
    """Write ``num_sites`` npz sites + a Bray-style index (real molecules); returns the index path."""
    from cloome_hf.data import CHANNELS, bundled_molecules
    from cloome_hf.image_processing_cloome import CloomeImageProcessor

    site_dir = os.path.join(HERE, "..", "tests", "data", "example_site")
    base = CloomeImageProcessor().load_uint8_site({c: os.path.join(site_dir, f"{c}.tif") for c in CHANNELS})
    rng = np.random.default_rng(seed)
    mols = bundled_molecules().iloc[: max(1, num_sites // 2)]
    os.makedirs(os.path.join(folder, "npz"), exist_ok=True)
    rows = []
    for i in range(num_sites):
        img = np.roll(base, (int(rng.integers(base.shape[1])), int(rng.integers(base.shape[2]))), axis=(1, 2))
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = img.copy()
        img.reshape(-1)[rng.integers(0, img.size, 2000)] = rng.integers(1, 255, 2000, dtype=np.uint8)
        key = f"BENCH{i // 384:03d}-{i % 384:03d}-1"
        mol = mols.iloc[i % len(mols)]
        np.savez(os.path.join(folder, "npz", f"{key}.npz"), sample=img.transpose(1, 2, 0),
                 channels=np.array({c: j for j, c in enumerate(CHANNELS)}, dtype=object))
        rows.append(dict(SAMPLE_KEY=key, PLATE_ID=key.split("-")[0], WELL_POSITION=key.split("-")[1], SITE=1,
                         SMILES=mol.smiles, INCHIKEY=mol.inchikey))
    pd.DataFrame(rows).to_csv(os.path.join(folder, "index.csv"), index=False)
    return os.path.join(folder, "index.csv")


class NpzSites(torch.utils.data.Dataset):
    """Upstream-style reading: one ``np.load`` per site, the transform per sample, ``default_collate``."""

    def __init__(self, index: str, root: str, transform=None):
        self.keys = pd.read_csv(index).SAMPLE_KEY.tolist()
        self.root = root
        self.transform = transform

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        with np.load(os.path.join(self.root, f"{self.keys[i]}.npz"), allow_pickle=True) as f:
            image = torch.from_numpy(f["sample"]).permute(2, 0, 1)
        return {"images": image} if self.transform is None else {"pixel_values": self.transform(image)}


def _time(loader, epochs: int) -> float:
    """Best sites/s over ``epochs`` passes (after a warm-up pass)."""
    for _ in loader:
        pass
    best = 0.0
    for _ in range(epochs):
        n, t = 0, time.perf_counter()
        for batch in loader:
            n += len(batch["images" if "images" in batch else "pixel_values"])
        best = max(best, n / (time.perf_counter() - t))
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_sites", type=int, default=96)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="0 = read in the main process")
    p.add_argument("--epochs", type=int, default=3, help="timed passes per setting (best is reported)")
    p.add_argument("--crop", type=int, nargs=2, default=None, help="random crop H W of the transform")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    from cloome_hf.data import build_dataloader, load_cell_painting, open_source, prepare_dataset
    from cloome_hf.transforms import CloomeTrainTransform

    torch.set_num_threads(1)  # one core per worker; the main process only iterates
    with tempfile.TemporaryDirectory() as tmp:
        index = make_sites(tmp, args.num_sites)
        t = time.perf_counter()
        prepare_dataset(open_source("bray_npz", index=index, root=os.path.join(tmp, "npz")),
                        os.path.join(tmp, "parquet"), shard_size=64, num_proc=2, progress=False)
        prepare_s = time.perf_counter() - t
        ds = load_cell_painting(os.path.join(tmp, "parquet"), split="train", cache_dir=os.path.join(tmp, "cache"))
        npz_bytes = sum(os.path.getsize(os.path.join(tmp, "npz", f)) for f in os.listdir(os.path.join(tmp, "npz")))
        pq_bytes = sum(os.path.getsize(os.path.join(tmp, "parquet", "data", f))
                       for f in os.listdir(os.path.join(tmp, "parquet", "data")))
        results = {"num_sites": args.num_sites, "site_shape": ds[0]["image_shape"], "batch_size": args.batch_size,
                   "prepare_s": round(prepare_s, 2), "npz_MB": round(npz_bytes / 1e6, 1),
                   "parquet_MB": round(pq_bytes / 1e6, 1), "sites_per_s": {}}
        for output in ("uint8", "pixel_values"):
            results["sites_per_s"][output] = {}
            for workers in args.workers:
                transform = CloomeTrainTransform(crop_size=args.crop, random_resized_crop_scale=None)
                npz_loader = torch.utils.data.DataLoader(
                    NpzSites(index, os.path.join(tmp, "npz"), None if output == "uint8" else transform),
                    batch_size=args.batch_size, shuffle=True, num_workers=workers, drop_last=True)
                pq_loader = build_dataloader(ds, None, batch_size=args.batch_size, train=True, transform=transform,
                                             num_workers=workers, unique_molecules=False, output=output)
                npz = _time(npz_loader, args.epochs)
                ours = _time(pq_loader, args.epochs)
                results["sites_per_s"][output][f"{workers}_workers"] = {
                    "npz": round(npz, 1), "parquet": round(ours, 1), "ratio": round(ours / npz, 2)}
                print(f"{output:>12}, {workers} worker(s): npz {npz:7.1f} sites/s | parquet {ours:7.1f} sites/s | "
                      f"{ours / npz:.2f}x", file=sys.stderr)
    print(json.dumps(results, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
