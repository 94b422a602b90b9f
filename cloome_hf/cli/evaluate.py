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

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arguments import (DatasetSplitArguments, ModelSourceArguments, OutputArguments, SyntheticDataArguments, arg,
                        parse_command, synthetic_options)

DEFAULT_TASKS = "retrieval,zeroshot_molecule,map"


@dataclass
class EvaluateArguments:
    _argument_group_name = "evaluation"

    tasks: str = arg(DEFAULT_TASKS, "comma-separated: retrieval, zeroshot_molecule, zeroshot_moa, linear_probe, map, "
                                    "jump_activity, jump_consistency")
    batch_size: int = arg(64, "sites per forward pass")
    seed: int = arg(0, "seeds prototypes, retrieval sites, non-matches, splits (and the synthetic data)")


@dataclass
class AnnotationArguments:
    _argument_group_name = "annotations"

    moa_column: str | None = arg(None, "dataset column holding each site's MoA")
    moa_annotations: str | None = arg(None, "table (CSV/Parquet) with InChIKey and MoA columns (e.g. the Drug "
                                            "Repurposing Hub annotations)")
    moa_key_column: str = arg("Metadata_InChIKey", "InChIKey column of --moa_annotations / --annotations")
    moa_value_column: str = arg("Metadata_moa", "MoA column of --moa_annotations")
    activity_labels: str | None = arg(None, "MatrixMarket activity label matrix (+1/-1)")
    activity_row_index: str | None = arg(None, "CSV INDEX,INCHIKEY of the matrix rows")
    activity_column_index: str | None = arg(None, "CSV ASSAY_ID of the matrix columns")
    linear_probe_C: list[float] | None = arg(None, "C grid of the linear probe (default 1e-6 ... 1e6)")
    n_jobs: int = arg(1, "parallel linear-probe tasks (-1 = all cores)")
    map_null_size: int = arg(10000, "copairs permutation null size")


@dataclass
class JumpProtocolArguments:
    _argument_group_name = "JUMP protocol (jump_activity, jump_consistency)"

    profile_pipeline: str = arg("mad_robustize,sphering", "normalisation steps of the well profiles, fitted on the "
                                                          "controls ('' = raw profiles)")
    controls: str | None = arg(None, "negative controls: a perturbation type ('negcon', the default) or a pandas "
                                     "query")
    annotations: str | None = arg(None, "compound annotation table (CSV/Parquet) with --moa_key_column and the "
                                        "--consistency_by column, for jump_consistency")
    consistency_by: str = arg("target", "annotation of phenotypic consistency: target or moa")
    active_only: bool = arg(False, "consistency only among the compounds jump_activity retrieves (the JUMP "
                                   "papers' choice)")


@dataclass
class BaselineArguments:
    _argument_group_name = "features baseline"

    baseline_features: str | None = arg(None, "table of per-site/per-well features + Metadata_* columns")
    baseline_name: str = arg("CellProfiler features", "its name in the tables")
    baseline_molecule_column: str = arg("Metadata_broad_sample", "its molecule column")
    baseline_plate_column: str = arg("Metadata_Plate", "its plate column")
    baseline_inchikey_column: str = arg("Metadata_InChIKey14", "its InChIKey column")
    baseline_moa_column: str = arg("Metadata_moa", "its MoA column")
    baseline_controls: str | None = arg(None, "query of the baseline's negative controls for the JUMP tasks "
                                              "(default: --controls)")


@dataclass
class FigureArguments:
    _argument_group_name = "figures"

    gallery_queries: int = arg(4, "query sites in the retrieval gallery")
    tsne_max_points: int = arg(3000, "sites drawn in the t-SNE")


ARGUMENTS = (ModelSourceArguments, DatasetSplitArguments, SyntheticDataArguments, OutputArguments, EvaluateArguments,
             AnnotationArguments, JumpProtocolArguments, BaselineArguments, FigureArguments)


def parse_arguments(argv=None):
    """The split defaults to 'test' when the dataset has one, else its first."""
    return parse_command("evaluate", ARGUMENTS, argv, required=("model", "output_dir"),
                         defaults={"dataset": "synthetic"}, description=__doc__)


def _load_sites(args):
    from ..data import load_cell_painting

    splits = load_cell_painting(args.dataset, synthetic=synthetic_options(args, args.seed))
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
    args = parse_arguments(argv)
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

