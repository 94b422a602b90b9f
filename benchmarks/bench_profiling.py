"""Profiling benchmark: peak memory and time of normalisation, phenotypic activity and consistency at JUMP scale.

Generates a JUMP-like compound screen of well profiles (384-well plates with 32 DMSO wells each; every plate map
of 352 compounds replicated on 5 plates; plate and batch shifts; 30 % of the compounds active), writes it to a
temporary Parquet file and runs each stage in a fresh Python process, so that each stage's peak resident memory
(``ru_maxrss``, imports and the loaded table included; both are reported separately) is its own:

* ``normalize``: ``cloome_hf.profiling.normalize(wells, PIPELINE)`` (default ``mad_robustize,sphering``);
* ``activity``: ``cloome_hf.profiling.phenotypic_activity`` with the JUMP defaults (null size 10,000), on the
  normalised wells, computed in chunks of whole plates (copairs issue #90: one call ran out of 14 GB at about
  9,000 wells);
* ``consistency``: ``phenotypic_consistency`` by target of the retrieved compounds that carry an annotation (2 %
  of the compounds, at least 300, 1-2 of 50 targets each), as the JUMP papers compute it.

Sizes (``--wells 100000,300000,600000``) run one after the other; per size and stage the JSON has wall and CPU
seconds, peak memory (``VmHWM``), seconds per 1,000 wells and the per-well wall and CPU time against the smallest
size (1.0 = linear growth). ``--baseline_wells N`` also times ``normalize`` against the direct pycytominer calls it replaces on N wells, in the same run, and checks that
they agree bit for bit. Target: 600,000 x 512 under 8 GB on the 2-core development machine.

    python benchmarks/bench_profiling.py                       # 100,000 wells x 512 dims
    python benchmarks/bench_profiling.py --wells 100000,300000,600000 --baseline_wells 20000 --output p.json
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
    """This process's peak resident memory: ``VmHWM`` on Linux (``ru_maxrss`` is not reset by ``exec``: a stage's
    would include the parent's peak at the fork, which grows with the generated table), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
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


def annotations_for(wells, fraction: float = 0.02, targets: int = 50, seed: int = 0):
    """Target annotations of ``fraction`` of the compounds (at least 300; 1-2 of ``targets`` labels each), as
    a JUMP annotation table covers only part of the compound set."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    compounds = np.unique(wells.loc[wells.Metadata_pert_type == "trt", "Metadata_InChIKey"])
    chosen = compounds[rng.random(len(compounds)) < max(fraction, 300 / len(compounds))]
    labels = ["|".join(f"T{t:03d}" for t in sorted(set(rng.integers(0, targets, rng.integers(1, 3)))))
              for _ in chosen]
    return pd.DataFrame({"Metadata_InChIKey": chosen, "target": labels})


def run_stage(stage: str, source: str, target: str, args) -> dict:
    """Child process: read ``source``, run ``stage``, write its output to ``target``, report time and memory."""
    import pandas as pd

    sys.path.insert(0, ROOT)
    from cloome_hf.profiling import normalize, phenotypic_activity, phenotypic_consistency

    imported = peak_rss_gib()  # cloome_hf imports torch and transformers: about 0.8 GiB before any data
    wells = pd.read_parquet(source, memory_map=True)
    loaded = peak_rss_gib()
    start, cpu_start = time.perf_counter(), time.process_time()
    if stage == "normalize":
        out = normalize(wells, args.pipeline)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        out.to_parquet(target)
        extra = {"pipeline": args.pipeline}
    elif stage == "activity":
        res = phenotypic_activity(wells, null_size=args.null_size, chunk_size=args.chunk_size)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        pd.DataFrame({"retrieved": [str(c) for c in res.retrieved()]}).to_parquet(target)
        extra = {"n_compounds": res.n_groups, "fraction_retrieved": res.fraction_retrieved, "mean_map": res.mean_map,
                 "null_size": args.null_size, "chunk_size": args.chunk_size}
    else:  # consistency of the retrieved, annotated compounds, as the JUMP papers compute it
        annotations = annotations_for(wells)
        retrieved = pd.read_parquet(target).retrieved.tolist()
        res = phenotypic_consistency(wells, annotations, by="target", null_size=args.null_size,
                                     compounds=retrieved)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        extra = {"n_annotated_compounds": len(annotations), "n_targets": res.n_groups,
                 "fraction_retrieved": res.fraction_retrieved}
    return {"stage": stage, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_rss_gib": round(peak_rss_gib(), 3),
            "rss_after_imports_gib": round(imported, 3), "rss_after_load_gib": round(loaded, 3), **extra}


def run_size(num_wells: int, args) -> dict:
    """Generate ``num_wells`` wells, then normalise, activity and consistency, each in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        wells = generate(num_wells, args.dims)
        raw, normalized = os.path.join(tmp, "wells.parquet"), os.path.join(tmp, "normalized.parquet")
        retrieved = os.path.join(tmp, "retrieved.parquet")
        wells.to_parquet(raw)
        report = {"wells": len(wells), "dims": args.dims, "plates": int(wells.Metadata_Plate.nunique()),
                  "generate_seconds": round(time.perf_counter() - start, 1), "stages": [],
                  "load_average_before": [round(v, 2) for v in os.getloadavg()]}
        del wells
        for stage, source, target in (("normalize", raw, normalized), ("activity", normalized, retrieved),
                                      ("consistency", normalized, retrieved)):
            cmd = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--source", source, "--target", target,
                   "--pipeline", args.pipeline, "--null_size", str(args.null_size), "--chunk_size",
                   str(args.chunk_size), "--dims", str(args.dims)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"stage {stage} at {num_wells} wells failed:\n{out.stderr[-3000:]}")
            report["stages"].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps({"wells": num_wells, **report["stages"][-1]}), flush=True)
        report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return report


def baseline_normalize(num_wells: int, args) -> dict:
    """Seconds of ``normalize`` against the direct pycytominer calls it replaces (``pycytominer.normalize`` on
    each plate's ``groupby`` slice, then one whole-table ``spherize``), same wells, same process, and whether the
    two agree bit for bit."""
    import pandas as pd
    from pycytominer import normalize as pyc_normalize

    sys.path.insert(0, ROOT)
    from cloome_hf.profiling import normalize

    wells = generate(num_wells, args.dims)
    feats = [c for c in wells.columns if not c.startswith("Metadata_")]
    meta, negcon = [c for c in wells.columns if c.startswith("Metadata_")], "Metadata_pert_type == 'negcon'"
    start = time.perf_counter()
    scaled = pd.concat([pyc_normalize(g, features=feats, meta_features=meta, samples=negcon,
                                      method="mad_robustize") for _, g in wells.groupby("Metadata_Plate", sort=False)])
    scaled = scaled.loc[wells.index, list(wells.columns)]
    direct = pyc_normalize(scaled, features=feats, meta_features=meta, samples=negcon, method="spherize",
                           spherize_method="ZCA-cor", spherize_center=True)
    direct_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = normalize(wells, "mad_robustize,sphering")
    ours_s = time.perf_counter() - start
    return {"wells": num_wells, "direct_pycytominer_seconds": round(direct_s, 2), "ours_seconds": round(ours_s, 2),
            "ratio_vs_direct": round(direct_s / ours_s, 2),
            "bit_identical": bool(np.array_equal(ours[feats].to_numpy(), direct[feats].to_numpy()))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wells", default="100000", help="comma-separated sizes, e.g. 100000,300000,600000")
    p.add_argument("--dims", type=int, default=512)
    p.add_argument("--pipeline", default="mad_robustize,sphering")
    p.add_argument("--null_size", type=int, default=10_000)
    p.add_argument("--chunk_size", type=int, default=20_000)
    p.add_argument("--baseline_wells", type=int, default=0,
                   help="also time normalize against the direct pycytominer calls on this many wells")
    p.add_argument("--smoke", action="store_true", help="4,000 wells x 64 dims, null 1,000")
    p.add_argument("--output", default=None, help="write the figures as JSON here")
    p.add_argument("--stage", choices=["normalize", "activity", "consistency"], help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.wells, args.dims, args.null_size = "4000", 64, 1000
    if args.stage:  # child
        print(json.dumps(run_stage(args.stage, args.source, args.target, args)))
        return {}
    sys.path.insert(0, ROOT)
    from cloome_hf.safe_io import atomic_write_json  # here: the children need no cloome_hf before their stage

    report = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, "sizes": []}
    if args.baseline_wells:
        report["normalize_baseline"] = baseline_normalize(args.baseline_wells, args)
        print(json.dumps(report["normalize_baseline"]), flush=True)
    for num_wells in [int(w) for w in str(args.wells).split(",")]:
        report["sizes"].append(run_size(num_wells, args))
        if args.output:  # after every size: a long run keeps what it measured
            atomic_write_json(args.output, report)
    first = report["sizes"][0]
    for size in report["sizes"]:
        size["seconds_per_1000_wells"] = {s["stage"]: round(1000 * s["seconds"] / size["wells"], 3)
                                          for s in size["stages"]}
        for clock in ("seconds", "cpu_seconds"):  # CPU time: what the machine's other jobs do not inflate
            size[f"per_well_{clock}_vs_smallest"] = {
                s["stage"]: round((s[clock] / size["wells"]) / (f[clock] / first["wells"]), 2)
                for s, f in zip(size["stages"], first["stages"])}
    if args.output:
        atomic_write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()
