"""``cloome serve`` on a 1 M-site store: start-up and one page query (molecule -> sites, pictures from thumbnails).

Builds, in a temporary folder, a model of the published architecture (random weights: speed does not depend on
them), a 1 M-site embedding store (``--dim`` 512 as CLOOME, float16 shards) whose sites carry thumbnails (a pool
of 64 real 128 px thumbnails of synthetic sites, repeated, so Parquet's dictionary keeps the store small; the
source images are not reachable, so every picture must come from the thumbnails) and a saved IVF index of it. Then measures, in this one run:

* start-up with the saved IVF index (``cloome serve --index``), counting FAISS index reads (must be 1), against
  the baseline start-up without it (the store's embeddings read and an exact index built at start);
* one page query as the page answers it (encode the SMILES, search, fetch k thumbnails, draw the structures,
  the table), median and worst over ``--queries`` different SMILES, IVF vs the exact baseline; and with a plate
  filter.

    python benchmarks/bench_serve.py                            # 1 M sites, k 10
    python benchmarks/bench_serve.py --num_rows 100000 --output bench_serve.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SMILES = ["CCO", "CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "c1ccccc1O", "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
          "CN1CCC[C@H]1c1cccnc1", "OC(=O)CCc1ccccc1", "Nc1ccccc1", "CC(=O)Nc1ccc(O)cc1", "O=C(O)c1ccccc1O",
          "CCN(CC)CC", "c1ccc2ccccc2c1", "CC(C)O", "OCC(O)CO", "C1CCCCC1", "c1ccncc1", "CC(=O)C", "ClCCl",
          "CCCCCCCC(=O)O", "NCC(=O)O", "C[C@@H](N)C(=O)O", "OC1=CC=CC=C1C=O", "COc1ccccc1", "CC#N"]


def make_model(folder: str) -> None:
    from cloome_hf import CloomeConfig, CloomeModel
    from cloome_hf.processing_cloome import CloomeProcessor

    CloomeModel(CloomeConfig()).save_pretrained(folder)
    CloomeProcessor().save_pretrained(folder)


def thumbnail_pool(size: int = 128, count: int = 64) -> list[bytes]:
    from cloome_hf.data.schema import decode_row
    from cloome_hf.data.synthetic import make_synthetic_dataset
    from cloome_hf.inference.thumbnails import thumbnail_bytes
    from cloome_hf.channels import CHANNELS

    ds = make_synthetic_dataset(num_molecules=count // 2, sites_per_molecule=2, num_plates=1, image_size=128, seed=0)
    return [thumbnail_bytes(decode_row(row), CHANNELS, size) for row in ds]


def make_store(folder: str, model: str, num_rows: int, dim: int, shard_size: int, seed: int = 0) -> np.ndarray:
    """Write the store (images shards, thumbnails, embedding_info.json); return its (N, dim) float32 embeddings."""
    from cloome_hf.inference.store import INFO_FILE, write_shard
    from cloome_hf.inference.thumbnails import THUMBNAILS, write_thumbnail_table
    from cloome_hf.safe_io import atomic_write_json

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((256, dim), dtype=np.float32)
    embeddings = np.empty((num_rows, dim), dtype=np.float32)
    pool = thumbnail_pool()
    os.makedirs(folder, exist_ok=True)
    atomic_write_json(os.path.join(folder, INFO_FILE), {"model_id": model, "revision": None, "dataset": None})
    for shard, start in enumerate(range(0, num_rows, shard_size)):
        stop = min(start + shard_size, num_rows)
        block = centers[rng.integers(len(centers), size=stop - start)]
        block += 0.5 * rng.standard_normal(block.shape, dtype=np.float32)
        embeddings[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
        rows = np.arange(start, stop)
        plates = [f"P{r // 1536:04d}" for r in rows]
        wells = [f"{chr(65 + (r // 4) % 16)}{(r // 64) % 24 + 1:02d}" for r in rows]
        keys = [f"{p}-{w}-{r % 4 + 1}" for p, w, r in zip(plates, wells, rows)]
        columns = {"sample_key": keys, "plate": plates, "well": wells, "site": [int(r % 4 + 1) for r in rows],
                   "smiles": [SMILES[r % len(SMILES)] for r in rows], "inchikey": [f"KEY{r % 997}" for r in rows],
                   "perturbation_type": ["negcon" if r % 16 == 0 else "trt" for r in rows]}
        name = f"shard-{shard:05d}.parquet"
        write_thumbnail_table(os.path.join(folder, THUMBNAILS, name), keys, [pool[r % len(pool)] for r in rows])
        os.makedirs(os.path.join(folder, "images"), exist_ok=True)
        write_shard(os.path.join(folder, "images", name), columns, embeddings[start:stop], "float16")
    return embeddings


def page_query(service, smiles: str, k: int, filters=None) -> float:
    """Seconds for what the page does on Search: query, k thumbnails with structures, the table."""
    from cloome_hf.serve.app import SITE_COLUMNS, hits_markdown, molecule_drawing, site_gallery

    t0 = time.perf_counter()
    hits = service.molecule_to_sites(smiles, k, filters)
    gallery = site_gallery(service, hits)
    molecule_drawing(smiles)
    hits_markdown(hits, SITE_COLUMNS)
    seconds = time.perf_counter() - t0
    if len(gallery) != len(hits):
        raise RuntimeError(f"{len(hits) - len(gallery)} of {len(hits)} hits have no picture from the thumbnails")
    return seconds


def query_times(service, k: int, queries: int, filters=None) -> dict[str, float]:
    page_query(service, SMILES[0], k, filters)  # warm-up: first forward pass, allocator
    times = [page_query(service, SMILES[i % len(SMILES)], k, filters) for i in range(queries)]
    return {"median_s": float(np.median(times)), "max_s": float(np.max(times))}


def start(store: str, index: str | None) -> tuple[object, float, int]:
    """A SearchService as ``cloome serve`` starts it, its start-up seconds and the FAISS index reads made."""
    import faiss

    from cloome_hf.inference import search
    from cloome_hf.serve import SearchService

    reads, original = [], faiss.read_index
    search.faiss.read_index = lambda *a, **kw: (reads.append(a[0]), original(*a, **kw))[1]
    try:
        t0 = time.perf_counter()
        service = SearchService.from_stores(store, index=index)
        return service, time.perf_counter() - t0, len(reads)
    finally:
        search.faiss.read_index = original


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--shard_size", type=int, default=65536)
    p.add_argument("--output", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    import torch

    from cloome_hf.inference.search import CloomeIndex, EmbeddingIndex

    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as root:
        model, store, index = (os.path.join(root, n) for n in ("model", "store", "index"))
        make_model(model)
        t0 = time.perf_counter()
        embeddings = make_store(store, model, args.num_rows, args.dim, args.shard_size)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        from cloome_hf.inference.store import read_embeddings

        meta = read_embeddings(os.path.join(store, "images")).drop_columns(["embedding"]).to_pandas()
        CloomeIndex(EmbeddingIndex(embeddings, meta, index_type="ivf"), model_id=model).save(index)
        ivf_build = time.perf_counter() - t0
        del embeddings, meta
        gc.collect()

        exact, exact_start, _ = start(store, None)  # baseline: no saved index, an exact index built at start
        exact_query = query_times(exact, args.k, args.queries)
        del exact
        gc.collect()
        ivf, ivf_start, reads = start(store, index)
        ivf_query = query_times(ivf, args.k, args.queries)
        plate = ivf.index.images.metadata["plate"].iloc[len(ivf.index.images) // 2]
        filtered = query_times(ivf, args.k, args.queries, {"plate": [plate]})
    out = {
        "num_rows": args.num_rows, "dim": args.dim, "k": args.k, "queries": args.queries,
        "threads": torch.get_num_threads(), "store_write_s": built, "ivf_build_and_save_s": ivf_build,
        "startup_exact_from_store_s": exact_start, "startup_saved_ivf_s": ivf_start, "ivf_index_reads": reads,
        "query_exact": exact_query, "query_ivf": ivf_query, "query_ivf_plate_filter": filtered,
        "startup_ratio_ivf_vs_exact": ivf_start / exact_start,
        "query_ratio_ivf_vs_exact": ivf_query["median_s"] / exact_query["median_s"],
    }
    print(json.dumps(out, indent=2))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    if reads != 1:
        raise SystemExit(f"start-up read the FAISS index {reads} times, not once")
    return out


if __name__ == "__main__":
    main()
