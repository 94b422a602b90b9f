#!/usr/bin/env python
"""Evaluate a CLOOME model on the paper's tasks and write ``results.json``, ``report.md`` and figures.

    python scripts/evaluate.py --model runs/demo --dataset synthetic --output_dir runs/demo/eval
    accelerate launch scripts/evaluate.py --model DIR_OR_HUB_ID --dataset data/bray --split test \\
        --tasks retrieval,zeroshot_molecule,zeroshot_moa,linear_probe,map \\
        --moa_annotations compound_moa_annotations.csv.gz \\
        --activity_labels label-matrix.mtx --activity_row_index row-compound-index.csv \\
        --baseline_features cellprofiler_profiles.csv.gz --output_dir eval

Sites are embedded once (batched, shared across ``accelerate`` processes); the tasks then run on the main
process. Tasks: ``retrieval`` (Table 1), ``linear_probe`` (Table 2), ``zeroshot_molecule`` (Table 3),
``zeroshot_moa`` (Table 4), ``map`` (copairs replicate mAP). A features baseline (e.g. CellProfiler
profiles; one row per site or well, ``Metadata_*`` columns plus numeric features) runs the image-only tasks
on its own rows and appears as an extra method row in every table it took part in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_TASKS = "retrieval,zeroshot_molecule,map"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="saved CLOOME folder or Hub id (with its processor, if saved)")
    p.add_argument("--dataset", default="synthetic",
                   help="'synthetic' (embedded generator), a prepared dataset folder, or a Hub dataset id")
    p.add_argument("--split", default=None, help="split to evaluate when the dataset has several (e.g. test)")
    p.add_argument("--tasks", default=DEFAULT_TASKS,
                   help="comma-separated: retrieval, zeroshot_molecule, zeroshot_moa, linear_probe, map "
                   f"(default {DEFAULT_TASKS})")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seeds prototypes, retrieval sites, non-matches, splits")
    p.add_argument("--max_sites", type=int, default=None, help="evaluate only the first N sites")
    g = p.add_argument_group("synthetic data")
    g.add_argument("--synthetic_molecules", type=int, default=200)
    g.add_argument("--synthetic_sites_per_molecule", type=int, default=4)
    g.add_argument("--synthetic_plates", type=int, default=4)
    g.add_argument("--synthetic_image_size", type=int, default=64)
    g = p.add_argument_group("annotations")
    g.add_argument("--moa_column", default=None, help="dataset column holding each site's MoA")
    g.add_argument("--moa_annotations", default=None,
                   help="CSV with InChIKey and MoA columns (e.g. the Drug Repurposing Hub annotations)")
    g.add_argument("--moa_key_column", default="Metadata_InChIKey")
    g.add_argument("--moa_value_column", default="Metadata_moa")
    g.add_argument("--activity_labels", default=None, help="MatrixMarket activity label matrix (+1/-1)")
    g.add_argument("--activity_row_index", default=None, help="CSV INDEX,INCHIKEY of the matrix rows")
    g.add_argument("--activity_column_index", default=None, help="CSV ASSAY_ID of the matrix columns")
    g.add_argument("--linear_probe_C", type=float, nargs="+", default=None,
                   help="C grid of the linear probe (default 1e-6 ... 1e6)")
    g.add_argument("--n_jobs", type=int, default=1, help="parallel linear-probe tasks (-1 = all cores)")
    g.add_argument("--map_null_size", type=int, default=10000, help="copairs permutation null size")
    g = p.add_argument_group("features baseline")
    g.add_argument("--baseline_features", default=None, help="CSV of per-site/per-well features + Metadata_*")
    g.add_argument("--baseline_name", default="CellProfiler features")
    g.add_argument("--baseline_molecule_column", default="Metadata_broad_sample")
    g.add_argument("--baseline_plate_column", default="Metadata_Plate")
    g.add_argument("--baseline_inchikey_column", default="Metadata_InChIKey14")
    g.add_argument("--baseline_moa_column", default="Metadata_moa")
    g = p.add_argument_group("figures")
    g.add_argument("--gallery_queries", type=int, default=4, help="query sites in the retrieval gallery")
    g.add_argument("--tsne_max_points", type=int, default=3000)
    return p


def load_model_and_processor(path: str):
    """Model plus the processor saved with it; a default processor matching the config if none was saved."""
    from cloome_hf import CloomeModel
    from cloome_hf.featurization_cloome import MoleculeFeaturizer
    from cloome_hf.image_processing_cloome import CloomeImageProcessor
    from cloome_hf.processing_cloome import CloomeProcessor

    model = CloomeModel.from_pretrained(path)
    try:
        processor = CloomeProcessor.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        if isinstance(err, ValueError) and "incompatible" in str(err):
            raise
        h, w = model.config.vision_config.image_size
        processor = CloomeProcessor(
            CloomeImageProcessor(crop_size={"height": h, "width": w}),
            MoleculeFeaturizer(fingerprint_size=model.config.molecule_config.fingerprint_size),
        )
    processor.check_model_compatibility(model.config)
    return model, processor


def load_dataset(args):
    import datasets

    if args.dataset == "synthetic":
        from cloome_hf.data.synthetic import make_synthetic_dataset

        ds = make_synthetic_dataset(num_molecules=args.synthetic_molecules,
                                    sites_per_molecule=args.synthetic_sites_per_molecule,
                                    num_plates=args.synthetic_plates, image_size=args.synthetic_image_size,
                                    seed=args.seed)
    elif os.path.isdir(args.dataset) and any(
        os.path.exists(os.path.join(args.dataset, f)) for f in ("dataset_dict.json", "state.json")
    ):
        ds = datasets.load_from_disk(args.dataset)
    else:
        from cloome_hf.data.loading import load_cell_painting

        ds = load_cell_painting(args.dataset)
    if isinstance(ds, datasets.DatasetDict):
        split = args.split or ("test" if "test" in ds else next(iter(ds)))
        if split not in ds:
            raise ValueError(f"dataset {args.dataset!r} has no split {split!r}; it has {list(ds)}")
        ds = ds[split]
    if args.max_sites is not None:
        ds = ds.select(range(min(args.max_sites, len(ds))))
    return ds


def _activity(args):
    if args.activity_labels is None:
        return None
    from cloome_hf.evaluation import load_activity_matrix

    return load_activity_matrix(args.activity_labels, args.activity_row_index, args.activity_column_index)


def _moa(args, emb, ds):
    from cloome_hf.evaluation.runner import moa_labels

    if args.moa_column:
        if args.moa_column not in ds.column_names:
            raise ValueError(f"--moa_column {args.moa_column!r} is not a dataset column; has {ds.column_names}")
        return np.asarray(ds[args.moa_column], dtype=object)
    if args.moa_annotations:
        table = pd.read_csv(args.moa_annotations)
        return moa_labels(emb.metadata["inchikey"], table, args.moa_key_column, args.moa_value_column)
    return None


def run_baseline(args, tasks, activity) -> dict:
    """Image-only tasks on a features table; a task the table cannot support is recorded, not fatal."""
    from cloome_hf.evaluation.runner import run_tasks

    table = pd.read_csv(args.baseline_features, low_memory=False)
    for col in (args.baseline_molecule_column, args.baseline_plate_column):
        if col not in table.columns:
            raise ValueError(f"{args.baseline_features}: no column {col!r}")
    feats = table[[c for c in table.columns if not c.startswith("Metadata_")]].select_dtypes("number")
    table = table[np.isfinite(feats.to_numpy()).all(1) & table[args.baseline_molecule_column].notna().to_numpy()]
    feats = feats.loc[table.index].to_numpy(np.float32)
    feats = (feats - feats.mean(0)) / np.where(feats.std(0) > 0, feats.std(0), 1.0)  # features differ in scale
    meta = pd.DataFrame({"inchikey": table[args.baseline_molecule_column].astype(str).to_numpy(),
                         "plate": table[args.baseline_plate_column].astype(str).to_numpy()})
    out: dict = {"tasks": {}, "skipped": {}, "n_rows": len(meta), "n_features": int(feats.shape[1])}
    for task in tasks:
        if task == "retrieval":
            out["skipped"][task] = "a features table has no molecule encoder"
            continue
        kwargs: dict = {}
        task_meta = meta
        if task == "zeroshot_moa":
            if args.baseline_moa_column not in table.columns:
                out["skipped"][task] = f"no column {args.baseline_moa_column!r}"
                continue
            kwargs["moa"] = table[args.baseline_moa_column].to_numpy(dtype=object)
        if task == "linear_probe":
            if args.baseline_inchikey_column not in table.columns or activity is None:
                out["skipped"][task] = "no InChIKey column or no activity labels"
                continue
            task_meta = meta.assign(inchikey=table[args.baseline_inchikey_column].astype(str).to_numpy())
            kwargs.update(activity=activity, linear_probe_Cs=args.linear_probe_C, n_jobs=args.n_jobs)
        try:
            out["tasks"].update(run_tasks([task], feats, task_meta, seed=args.seed, map_null_size=args.map_null_size,
                                          show_progress=False, **kwargs))
        except ValueError as err:
            out["skipped"][task] = str(err)
    return out


def make_figures(args, emb, ds, moa, output_dir: Path) -> dict:
    from cloome_hf.data.schema import decode_row
    from cloome_hf.evaluation.figures import plot_embedding_tsne, plot_retrieval_gallery
    from cloome_hf.evaluation.runner import retrieval_subset

    figures = {}
    names = emb.metadata["inchikey"].to_numpy()
    if "name" in ds.column_names:
        names = np.asarray(ds["name"], dtype=object)
    plot_embedding_tsne(emb.image, names, output_dir / "tsne_molecule.png", seed=args.seed,
                        max_points=args.tsne_max_points, title="t-SNE of image embeddings, by molecule")
    figures["tsne_molecule"] = "tsne_molecule.png"
    annotated = np.zeros(len(emb.image), bool) if moa is None else pd.notna(pd.Series(moa)).to_numpy()
    if annotated.sum() >= 3:  # only annotated sites: "unknown" would otherwise be the largest class
        plot_embedding_tsne(emb.image[annotated], moa[annotated], output_dir / "tsne_moa.png", seed=args.seed,
                            max_points=args.tsne_max_points, title="t-SNE of image embeddings, by MoA")
        figures["tsne_moa"] = "tsne_moa.png"

    sub = retrieval_subset(emb.metadata, args.seed)
    rng = np.random.default_rng(args.seed)
    queries = np.sort(rng.choice(sub, size=min(args.gallery_queries, len(sub)), replace=False))
    cand_rows = emb.molecule_index[sub]  # the retrieval candidate set: one entry per molecule
    sims = emb.image[queries] @ emb.molecule[cand_rows].T  # embeddings are unit-norm: cosine
    # Ranks and the top 5 come from this one matrix: a true score recomputed elsewhere can differ in the last bit.
    true_cols = np.array([int(np.flatnonzero(cand_rows == emb.molecule_index[q])[0]) for q in queries])
    true_scores = sims[np.arange(len(queries)), true_cols]
    ranks = (sims >= true_scores[:, None]).sum(1)  # pessimistic, as in the retrieval table
    top = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    scores = np.take_along_axis(sims, top, axis=1)
    smiles = emb.molecules["smiles"].to_numpy()
    top_smiles = [[smiles[cand_rows[j]] for j in row] for row in top]
    true_pos = [int(np.flatnonzero(row == col)[0]) if (row == col).any() else -1 for row, col in zip(top, true_cols)]
    sites = [decode_row(ds[int(q)]) for q in queries]
    titles = [f"{emb.metadata['sample_key'].iloc[q]} (true rank {r})" for q, r in zip(queries, ranks)]
    plot_retrieval_gallery(sites, top_smiles, scores, true_pos, output_dir / "retrieval_gallery.png",
                           query_titles=titles)
    figures["retrieval_gallery"] = "retrieval_gallery.png"
    return figures


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from accelerate import Accelerator

    from cloome_hf.evaluation import write_report
    from cloome_hf.evaluation.runner import TASKS, embed_dataset, run_tasks

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r} in --tasks; choose from {', '.join(TASKS)}")
    if "linear_probe" in tasks and (args.activity_labels is None or args.activity_row_index is None):
        raise ValueError("--tasks linear_probe needs --activity_labels and --activity_row_index")
    if "zeroshot_moa" in tasks and not (args.moa_column or args.moa_annotations):
        raise ValueError("--tasks zeroshot_moa needs --moa_column or --moa_annotations")

    accelerator = Accelerator()
    model, processor = load_model_and_processor(args.model)
    ds = load_dataset(args)
    emb = embed_dataset(model, processor, ds, batch_size=args.batch_size, accelerator=accelerator,
                        show_progress=accelerator.is_main_process)
    if not accelerator.is_main_process:
        return {}
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    moa = _moa(args, emb, ds)
    activity = _activity(args)
    results = {
        "model": args.model,
        "model_name": "CLOOME (this model)",
        "dataset": args.dataset + (f" [{args.split}]" if args.split else ""),
        "n_sites": int(len(emb.metadata)),
        "n_molecules": int(len(emb.molecules)),
        "seed": args.seed,
        "tasks": run_tasks(tasks, emb.image, emb.metadata, molecule=emb.molecule,
                           molecule_index=emb.molecule_index, moa=moa, activity=activity, seed=args.seed,
                           linear_probe_Cs=args.linear_probe_C, n_jobs=args.n_jobs,
                           map_null_size=args.map_null_size),
        "baselines": {},
    }
    if args.baseline_features:
        results["baselines"][args.baseline_name] = run_baseline(args, tasks, activity)
    results["figures"] = make_figures(args, emb, ds, moa, output_dir)
    np.save(output_dir / "image_embeddings.npy", emb.image)
    write_report(results, output_dir)
    print(json.dumps({t: _headline(t, r) for t, r in results["tasks"].items()}, indent=1))
    return results


def _headline(task: str, res: dict):
    if task == "retrieval":
        return {d: res[d]["top1"]["value"] for d in ("image_to_molecule", "molecule_to_image")}
    if task.startswith("zeroshot"):
        return res["top1"]["value"]
    if task == "linear_probe":
        return res["auc"]["mean"]
    return res["mean_map"]


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
