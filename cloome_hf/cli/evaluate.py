"""``cloome evaluate``: a CLOOME model on the paper's tasks -> ``results.json``, ``report.md`` and figures.

    cloome evaluate --model runs/demo --dataset synthetic --output_dir runs/demo/eval
    accelerate launch -m cloome_hf.cli evaluate --model DIR_OR_HUB_ID --dataset data/bray --split test \\
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
import sys
from pathlib import Path

import numpy as np

DEFAULT_TASKS = "retrieval,zeroshot_molecule,map"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloome evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="saved CLOOME folder or Hub id (model and processor)")
    p.add_argument("--revision", default=None, help="Hub revision of --model")
    p.add_argument("--dataset", default="synthetic",
                   help="anything load_cell_painting reads: 'synthetic' (embedded generator), a prepared or "
                   "save_to_disk folder, a Hub dataset id, a raw index / load_data table")
    p.add_argument("--split", default=None, help="split to evaluate (default: 'test' if the dataset has one, "
                   "else its first)")
    p.add_argument("--tasks", default=DEFAULT_TASKS,
                   help="comma-separated: retrieval, zeroshot_molecule, zeroshot_moa, linear_probe, map, "
                   f"jump_activity, jump_consistency (default {DEFAULT_TASKS})")
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
    g = p.add_argument_group("JUMP protocol (jump_activity, jump_consistency)")
    g.add_argument("--profile_pipeline", default="mad_robustize,sphering",
                   help="normalisation steps of the well profiles, fitted on the controls ('' = raw profiles)")
    g.add_argument("--controls", default=None,
                   help="negative controls: a perturbation type ('negcon', the default) or a pandas query")
    g.add_argument("--annotations", default=None,
                   help="compound annotation table (CSV/Parquet) with --moa_key_column and the --consistency_by "
                   "column, for jump_consistency")
    g.add_argument("--consistency_by", default="target", help="annotation of phenotypic consistency: target or moa")
    g.add_argument("--active_only", action="store_true",
                   help="consistency only among the compounds jump_activity retrieves (the JUMP papers' choice)")
    g = p.add_argument_group("features baseline")
    g.add_argument("--baseline_features", default=None, help="CSV of per-site/per-well features + Metadata_*")
    g.add_argument("--baseline_name", default="CellProfiler features")
    g.add_argument("--baseline_molecule_column", default="Metadata_broad_sample")
    g.add_argument("--baseline_plate_column", default="Metadata_Plate")
    g.add_argument("--baseline_inchikey_column", default="Metadata_InChIKey14")
    g.add_argument("--baseline_moa_column", default="Metadata_moa")
    g.add_argument("--baseline_controls", default=None,
                   help="query of the baseline's negative controls for the JUMP tasks (default: --controls)")
    g = p.add_argument_group("figures")
    g.add_argument("--gallery_queries", type=int, default=4, help="query sites in the retrieval gallery")
    g.add_argument("--tsne_max_points", type=int, default=3000)
    return p


def _load_sites(args):
    from ..data import load_cell_painting

    synthetic = dict(num_molecules=args.synthetic_molecules, sites_per_molecule=args.synthetic_sites_per_molecule,
                     num_plates=args.synthetic_plates, image_size=args.synthetic_image_size, seed=args.seed)
    splits = load_cell_painting(args.dataset, synthetic=synthetic)
    split = args.split or ("test" if "test" in splits else next(iter(splits)))
    if split not in splits:
        raise ValueError(f"dataset {args.dataset!r} has no split {split!r}; it has {list(splits)}")
    ds = splits[split]
    return ds.select(range(min(args.max_sites, len(ds)))) if args.max_sites is not None else ds


def _activity(args):
    if args.activity_labels is None:
        return None
    from ..evaluation import load_activity_matrix

    return load_activity_matrix(args.activity_labels, args.activity_row_index, args.activity_column_index)


def _moa(args, emb, ds):
    from ..evaluation.runner import moa_labels

    if args.moa_column:
        if args.moa_column not in ds.column_names:
            raise ValueError(f"--moa_column {args.moa_column!r} is not a dataset column; has {ds.column_names}")
        return np.asarray(ds[args.moa_column], dtype=object)
    if args.moa_annotations:
        from ..data.remote import read_table

        table, _ = read_table(args.moa_annotations, "MoA annotation", as_text=False)
        return moa_labels(emb.metadata["inchikey"], table, args.moa_key_column, args.moa_value_column)
    return None


#: whether ``args`` give each input a task may require, and the flags that give it
_INPUT_FLAGS = {
    "activity": (lambda a: a.activity_labels is not None and a.activity_row_index is not None,
                 "--activity_labels and --activity_row_index"),
    "moa": (lambda a: bool(a.moa_column or a.moa_annotations), "--moa_column or --moa_annotations"),
    "annotations": (lambda a: a.annotations is not None, "--annotations"),
}


def _split_tasks(args) -> tuple[list[str], list[str]]:
    """``--tasks`` as (the paper's tasks, the JUMP protocol's tasks); refuses unknown tasks and missing inputs."""
    from ..evaluation.tasks import EVALUATION_TASKS

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in EVALUATION_TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r} in --tasks; choose from {', '.join(EVALUATION_TASKS)}")
    for name in tasks:
        for need in EVALUATION_TASKS[name].requires:
            given, flags = _INPUT_FLAGS.get(need, (lambda a: True, ""))
            if not given(args):
                raise ValueError(f"--tasks {name} needs {flags}")
    protocol = {name: EVALUATION_TASKS[name].protocol for name in tasks}
    return [t for t in tasks if protocol[t] == "paper"], [t for t in tasks if protocol[t] == "jump"]


def _baseline(args):
    from ..evaluation.baseline import FeatureBaseline

    if not args.baseline_features:
        return None
    return FeatureBaseline(args.baseline_features, name=args.baseline_name, controls=args.baseline_controls,
                           compound_column=args.baseline_molecule_column, inchikey_column=args.baseline_inchikey_column,
                           plate_column=args.baseline_plate_column, moa_column=args.baseline_moa_column)


def _paper_results(args, tasks, emb, ds, baseline) -> dict:
    """The paper's tasks on the model's embeddings and on the features baseline."""
    from ..evaluation.baseline import evaluate_feature_table
    from ..evaluation.runner import run_tasks

    activity = _activity(args)
    options = dict(activity=activity, seed=args.seed, linear_probe_Cs=args.linear_probe_C, n_jobs=args.n_jobs,
                   map_null_size=args.map_null_size)
    results = {
        "model": args.model, "model_name": "CLOOME (this model)",
        "dataset": args.dataset + (f" [{args.split}]" if args.split else ""),
        "n_sites": int(len(emb.metadata)), "n_molecules": int(len(emb.molecules)), "seed": args.seed,
        "tasks": run_tasks(tasks, emb.image, emb.metadata, molecule=emb.molecule, molecule_index=emb.molecule_index,
                           moa=_moa(args, emb, ds), **options),
        "baselines": {},
    }
    if baseline is not None:
        results["baselines"][baseline.name] = evaluate_feature_table(baseline, tasks, **options)
    return results


def _add_protocol_results(args, tasks, emb, baseline, results: dict, output_dir) -> dict[str, str]:
    """The JUMP protocol's tasks merged into ``results``; returns their figures."""
    from ..evaluation.jump import jump_tasks

    protocol = jump_tasks(tasks, emb.image, metadata=emb.metadata, pipeline=args.profile_pipeline,
                          controls=args.controls, annotations=args.annotations, by=args.consistency_by,
                          annotation_key=args.moa_key_column, active_only=args.active_only, baseline=baseline,
                          output_dir=output_dir, null_size=args.map_null_size, seed=args.seed)
    results["tasks"].update(protocol["tasks"])
    for name, part in protocol["baselines"].items():
        results["baselines"].setdefault(name, {"tasks": {}})["tasks"].update(part["tasks"])
    return protocol["figures"]


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from accelerate import Accelerator

    from ..evaluation import write_report
    from ..evaluation.figures import evaluation_figures
    from ..inference.encode import encode_dataset
    from ..processing_cloome import load_model_and_processor

    from ..data.loading import refuse_missing_local_path
    from ..evaluation.training_overlap import overlap_line, training_overlap

    paper_tasks, protocol_tasks = _split_tasks(args)
    refuse_missing_local_path(args.model, "model")
    accelerator = Accelerator()
    model, processor = load_model_and_processor(args.model, revision=args.revision)
    model.to(accelerator.device)
    ds = _load_sites(args)
    emb = encode_dataset(model, processor, ds, batch_size=args.batch_size, accelerator=accelerator,
                         show_progress=accelerator.is_main_process)
    if not accelerator.is_main_process:
        return {}
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    baseline = _baseline(args)
    results = _paper_results(args, paper_tasks, emb, ds, baseline)
    results["training_overlap"] = training_overlap(args.model, emb.metadata["inchikey"])
    figures = _add_protocol_results(args, protocol_tasks, emb, baseline, results, output_dir) if protocol_tasks else {}
    if "retrieval" in paper_tasks or not protocol_tasks:  # the retrieval gallery and the embedding t-SNE
        figures.update(evaluation_figures(emb, ds, output_dir, moa=_moa(args, emb, ds), seed=args.seed,
                                          gallery_queries=args.gallery_queries,
                                          tsne_max_points=args.tsne_max_points))
    results["figures"] = figures
    results["figures_not_drawn"] = skipped_figures(args, figures)
    np.save(output_dir / "image_embeddings.npy", emb.image)
    json_path, report_path = write_report(results, output_dir)
    print(overlap_line(results["training_overlap"]))
    print(format_summary(summary_rows(results)))
    written = [str(json_path), str(report_path), *(str(output_dir / f) for f in figures.values())]
    print(f"wrote {', '.join(written)}", file=sys.stderr)
    for name, reason in results["figures_not_drawn"].items():
        print(f"not drawn: {name} ({reason})", file=sys.stderr)
    return results


def skipped_figures(args, figures: dict) -> dict[str, str]:
    """The figures the README describes that this run did not draw, and why."""
    out = {}
    if "tsne_moa" not in figures and not any("moa" in name for name in figures):
        out["t-SNE by MoA"] = "no MoA annotations: give --moa_column or --moa_annotations"
    return out


def summary_rows(results: dict) -> list[tuple[str, str, float, float | None, float | None, int | None]]:
    """The headline numbers, one ``(task, metric, value, ci_low, ci_high, n)`` per row, for the console."""
    from ..evaluation.tasks import EVALUATION_TASKS

    return [row for task, res in results["tasks"].items() if task in EVALUATION_TASKS
            for row in EVALUATION_TASKS[task].headline(res)]


def format_summary(rows) -> str:
    """``rows`` of :func:`summary_rows` as an aligned text table (``-`` where a metric has no interval)."""
    header = ("task", "metric", "value", "95 % CI", "n")
    body = [(t, m, f"{v:.3f}", "-" if lo is None else f"[{lo:.3f}, {hi:.3f}]", "-" if n is None else str(n))
            for t, m, v, lo, hi, n in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *body])

