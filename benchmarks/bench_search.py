"""Search benchmark: 1,000 queries, k=10, over 1 M x 512 float32 embeddings.

Compares, in one run and on the same generated data,
  * numpy baseline: (query block @ database.T) + argpartition + sort of the k best,
  * exact FAISS (``EmbeddingIndex(index_type="flat")``, ``IndexFlatIP``),
  * approximate FAISS (IVF and/or HNSW) with recall@k against exact,
and reports queries/s, build time, index bytes and the process's resident memory.

The database is a mixture of Gaussians on the unit sphere (real CLOOME embeddings cluster by phenotype;
uniform random vectors would make every approximate index look bad for reasons that do not apply here),
queries are noisy copies of held-out points from the same mixture.

    python benchmarks/bench_search.py                       # 1 M rows, IVF
    python benchmarks/bench_search.py --num_rows 100000 --index_types ivf hnsw --output bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

import faiss
import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cloome_hf.inference.search import EmbeddingIndex  # noqa: E402


def rss_gib() -> float:
    return psutil.Process().memory_info().rss / 2**30


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss: KiB on Linux


def generate(num_rows: int, dim: int, num_clusters: int, noise: float, seed: int, chunk: int = 65536) -> np.ndarray:
    """(num_rows, dim) float32 unit vectors from a Gaussian mixture, generated chunk-wise (one full copy)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_clusters, dim), dtype=np.float32)
    out = np.empty((num_rows, dim), dtype=np.float32)
    for start in range(0, num_rows, chunk):
        stop = min(start + chunk, num_rows)
        block = centers[rng.integers(num_clusters, size=stop - start)]
        block += noise * rng.standard_normal(block.shape, dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def numpy_topk(db: np.ndarray, queries: np.ndarray, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Baseline: matmul a block of queries against the whole database, argpartition, sort the k best."""
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        sims = queries[start:start + block] @ db.T
        part = np.argpartition(sims, -k, axis=1)[:, -k:]
        part_scores = np.take_along_axis(sims, part, axis=1)
        del sims  # free the (block, N) scores before the next block allocates its own
        order = np.argsort(-part_scores, axis=1)
        ids[start:start + block] = np.take_along_axis(part, order, axis=1)
        scores[start:start + block] = np.take_along_axis(part_scores, order, axis=1)
    return scores, ids


def timed(fn, repeats: int):
    """Best-of-``repeats`` wall time (s) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--num_queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--index_types", nargs="+", default=["ivf"], choices=["ivf", "hnsw"])
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default sqrt(N))")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64], help="IVF nprobe values to time")
    parser.add_argument("--ef_search", type=int, nargs="+", default=[64, 128], help="HNSW efSearch values to time")
    parser.add_argument("--num_clusters", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=1.2, help="within-cluster noise (relative to unit centers)")
    parser.add_argument("--numpy_block", type=int, default=100, help="queries per numpy matmul block")
    parser.add_argument("--repeats", type=int, default=2, help="best-of repeats for query timings")
    parser.add_argument("--threads", type=int, default=None,
                        help="cap BLAS and OpenMP (FAISS) threads for every method alike; on a machine shared with "
                             "other jobs, 1 avoids OpenMP spin-waiting distorting the timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads):
        return _run(args)


def _run(args) -> dict:

    k, nq = args.k, args.num_queries
    res: dict = {"args": vars(args), "faiss": faiss.__version__, "numpy": np.__version__,
                 "cpu_count": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
                 "load_average_at_start": os.getloadavg(),
                 "machine": platform.processor() or platform.machine()}
    rss0 = rss_gib()
    t0 = time.perf_counter()
    db = generate(args.num_rows + nq, args.dim, args.num_clusters, args.noise, args.seed)
    noise = np.random.default_rng(args.seed + 1).standard_normal((nq, args.dim), dtype=np.float32)
    queries = db[args.num_rows:] + 0.05 * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)  # unit queries: numpy scores are cosines too
    db = db[: args.num_rows]
    res["generate_s"] = time.perf_counter() - t0
    res["database_gib"] = db.nbytes / 2**30
    print(f"generated {db.shape} float32 ({res['database_gib']:.2f} GiB) in {res['generate_s']:.1f}s", flush=True)

    secs, (np_scores, np_ids) = timed(lambda db=db: numpy_topk(db, queries, k, args.numpy_block), args.repeats)
    res["numpy"] = {"search_s": secs, "qps": nq / secs, "rss_gib_after": rss_gib(), "peak_rss_gib_so_far": peak_rss_gib()}
    print(f"numpy matmul+argpartition: {nq / secs:,.0f} queries/s", flush=True)

    t0 = time.perf_counter()
    flat = EmbeddingIndex(db, index_type="flat")
    build = time.perf_counter() - t0
    secs, (fl_scores, fl_ids) = timed(lambda: flat.search(queries, k), args.repeats)
    agree = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(fl_ids, np_ids)]))
    res["faiss_flat"] = {"build_s": build, "search_s": secs, "qps": nq / secs, "index_gib": db.nbytes / 2**30,
                         "top_k_agreement_with_numpy": agree,
                         "max_abs_score_diff_vs_numpy": float(np.abs(fl_scores - np_scores).max()),
                         "rss_gib_after": rss_gib(), "peak_rss_gib_so_far": peak_rss_gib()}
    res["speedup_faiss_flat_vs_numpy"] = res["faiss_flat"]["qps"] / res["numpy"]["qps"]
    print(f"FAISS IndexFlatIP: {nq / secs:,.0f} queries/s ({res['speedup_faiss_flat_vs_numpy']:.2f}x numpy), "
          f"agreement {agree:.4f}", flush=True)

    # from here on the flat index's storage (a view) is the only copy of the database: peak memory is
    # two copies (flat + approximate index), not three
    del db
    vectors = flat.vectors()
    approx: list[dict] = []
    for index_type in args.index_types:
        t0 = time.perf_counter()
        index = EmbeddingIndex(vectors, index_type=index_type, nlist=args.nlist, seed=args.seed)
        build = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:  # on-disk size = index size, without a second in-memory copy
            faiss.write_index(index.index, os.path.join(tmp, "index.faiss"))
            index_gib = os.path.getsize(os.path.join(tmp, "index.faiss")) / 2**30
        settings = args.nprobe if index_type == "ivf" else args.ef_search
        for value in settings:
            if index_type == "ivf":
                index.index.nprobe = value
            else:
                index.index.hnsw.efSearch = value
            secs, _ = timed(lambda index=index: index.search(queries, k), args.repeats)
            recall = index.recall_at_k(queries, k, exact_ids=fl_ids)
            row = {"index_type": index_type, ("nprobe" if index_type == "ivf" else "ef_search"): value,
                   "build_s": build, "search_s": secs, "qps": nq / secs, f"recall@{k}": recall,
                   "speedup_vs_faiss_flat": (nq / secs) / res["faiss_flat"]["qps"],
                   "index_gib": index_gib, "rss_gib_after": rss_gib(), "peak_rss_gib_so_far": peak_rss_gib()}
            if index_type == "ivf":
                row["nlist"] = index.config["nlist"]
            approx.append(row)
            print(f"{index_type} ({value}): build {build:.1f}s, {nq / secs:,.0f} queries/s, recall@{k} {recall:.4f}",
                  flush=True)
        del index
    res["approximate"] = approx
    res["peak_rss_gib"] = peak_rss_gib()
    res["baseline_rss_gib"] = rss0
    print(f"peak RSS {res['peak_rss_gib']:.2f} GiB", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
