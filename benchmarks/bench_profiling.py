"""Profiling benchmark: peak memory and time of normalisation and phenotypic activity on 100,000 wells x 512 dims.

Generates a JUMP-like compound screen of well profiles (384-well plates with 32 DMSO wells each; every plate map
of 352 compounds replicated on 5 plates; plate and batch shifts; 30 % of the compounds active), writes it to a
temporary Parquet file and runs each stage in a fresh Python process, so that each stage's peak resident memory
(``ru_maxrss``, imports and the loaded table included; both are reported separately) is its own:

* ``normalize``: ``cloome_hf.profiling.normalize(wells, PIPELINE)`` (default ``mad_robustize,sphering``);
* ``activity``: ``cloome_hf.profiling.phenotypic_activity`` with the JUMP defaults (null size 10,000), on the
  normalised wells, computed in chunks of whole plates (copairs issue #90: one call ran out of 14 GB at about
  9,000 wells).

Target: under 4 GB and a few minutes for the activity stage at 100,000 x 512.

    python benchmarks/bench_profiling.py                       # 100,000 wells x 512 dims
    python benchmarks/bench_profiling.py --smoke               # 4,000 wells x 64 dims, null 1,000: proves it runs
    python benchmarks/bench_profiling.py --output bench_profiling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLATE_WELLS, CONTROLS_PER_PLATE, REPLICATES, PLATES_PER_BATCH = 384, 32, 5, 20


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss: KiB on Linux


def generate(num_wells: int, dim: int, seed: int = 0):
    """Well profiles (float32) of a compound screen laid out as in the module docstring."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    per_map = PLATE_WELLS - CONTROLS_PER_PLATE
    num_plates = -(-num_wells // PLATE_WELLS)
    plate_of, compound_of, pert = [], [], []
    for plate in range(num_plates):
        first = (plate // REPLICATES) * per_map  # plates 0-4 share map 0, plates 5-9 map 1, ...
        wells = [f"CPD{first + i:06d}" for i in range(per_map)] + ["DMSO"] * CONTROLS_PER_PLATE
        for w in rng.permutation(len(wells))[: min(PLATE_WELLS, num_wells - len(plate_of))]:
            plate_of.append(plate)
            compound_of.append(wells[w])
            pert.append("negcon" if wells[w] == "DMSO" else "trt")
    plate_of = np.array(plate_of)
    compounds, inverse = np.unique(compound_of, return_inverse=True)
    effect = rng.normal(0, 0.6, (len(compounds), dim)).astype(np.float32)
    effect[rng.random(len(compounds)) > 0.3] = 0  # inactive compounds (and DMSO) have no effect
    effect[compounds == "DMSO"] = 0
    plate_shift = rng.normal(0, 1, (num_plates, dim)).astype(np.float32)
    batch_shift = rng.normal(0, 1, (-(-num_plates // PLATES_PER_BATCH), dim)).astype(np.float32)
    values = effect[inverse] + plate_shift[plate_of] + batch_shift[plate_of // PLATES_PER_BATCH]
    values += rng.standard_normal(values.shape, dtype=np.float32)
    meta = pd.DataFrame({"Metadata_Plate": [f"PLATE{p:05d}" for p in plate_of],
                         "Metadata_Batch": [f"BATCH{p // PLATES_PER_BATCH:03d}" for p in plate_of],
                         "Metadata_InChIKey": compound_of, "Metadata_pert_type": pert})
    width = len(str(dim - 1))
    feats = pd.DataFrame(values, columns=[f"emb_{i:0{width}d}" for i in range(dim)])
    return pd.concat([meta, feats], axis=1)


def run_stage(stage: str, source: str, target: str, args) -> dict:
    """Child process: read ``source``, run ``stage``, write its output to ``target``, report time and memory."""
    import pandas as pd

    sys.path.insert(0, ROOT)
    from cloome_hf.profiling import normalize, phenotypic_activity

    imported = peak_rss_gib()  # cloome_hf imports torch and transformers: about 0.8 GiB before any data
    wells = pd.read_parquet(source)
    loaded = peak_rss_gib()
    start = time.perf_counter()
    if stage == "normalize":
        out = normalize(wells, args.pipeline)
        out.to_parquet(target)
        extra = {"pipeline": args.pipeline}
    else:
        res = phenotypic_activity(wells, null_size=args.null_size, chunk_size=args.chunk_size)
        extra = {"n_compounds": res.n_groups, "fraction_retrieved": res.fraction_retrieved, "mean_map": res.mean_map,
                 "null_size": args.null_size, "chunk_size": args.chunk_size}
    seconds = time.perf_counter() - start
    return {"stage": stage, "seconds": round(seconds, 2), "peak_rss_gib": round(peak_rss_gib(), 3),
            "rss_after_imports_gib": round(imported, 3), "rss_after_load_gib": round(loaded, 3), **extra}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wells", type=int, default=100_000)
    p.add_argument("--dims", type=int, default=512)
    p.add_argument("--pipeline", default="mad_robustize,sphering")
    p.add_argument("--null_size", type=int, default=10_000)
    p.add_argument("--chunk_size", type=int, default=20_000)
    p.add_argument("--smoke", action="store_true", help="4,000 wells x 64 dims, null 1,000")
    p.add_argument("--output", default=None, help="write the figures as JSON here")
    p.add_argument("--stage", choices=["normalize", "activity"], help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.wells, args.dims, args.null_size = 4000, 64, 1000
    if args.stage:  # child
        print(json.dumps(run_stage(args.stage, args.source, args.target, args)))
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        wells = generate(args.wells, args.dims)
        raw, normalized = os.path.join(tmp, "wells.parquet"), os.path.join(tmp, "normalized.parquet")
        wells.to_parquet(raw)
        report = {"wells": len(wells), "dims": args.dims, "plates": int(wells.Metadata_Plate.nunique()),
                  "generate_seconds": round(time.perf_counter() - start, 1), "stages": [],
                  "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
        del wells
        for stage, source, target in (("normalize", raw, normalized), ("activity", normalized, "")):
            cmd = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--source", source, "--target", target,
                   "--pipeline", args.pipeline, "--null_size", str(args.null_size), "--chunk_size",
                   str(args.chunk_size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            report["stages"].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(report["stages"][-1]), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
