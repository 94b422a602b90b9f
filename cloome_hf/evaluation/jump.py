"""The JUMP consortium's evaluation of a representation: phenotypic activity and consistency (copairs mAP).

Embeddings (or any features) become well profiles (:func:`cloome_hf.profiling.aggregate`), are corrected by a
normalisation pipeline fitted on the negative controls (:func:`cloome_hf.profiling.normalize`, e.g.
``"mad_robustize,sphering"``) and answer two questions:

* ``jump_activity``: is each compound's profile distinguishable from its plates' negative controls?
  (:func:`cloome_hf.profiling.phenotypic_activity`, the JUMP recipe's defaults);
* ``jump_consistency``: do compounds sharing a target / MoA have similar consensus profiles?
  (:func:`cloome_hf.profiling.phenotypic_consistency`, multi-label).

A feature baseline (CellProfiler well profiles, :class:`FeatureBaseline`) goes through the same pipeline and
sits in the same tables. :func:`jump_tasks` returns a fragment of the evaluation ``results`` dict
(``{"tasks": ..., "baselines": ..., "figures": ...}``, the shape :mod:`.report` reads); the task registry
(:mod:`.tasks`) names the renderers of its tables, :func:`.figures.plot_map_vs_pvalue` draws mAP against -log10 p.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from cloome_hf.profiling import aggregate, normalize, parse_pipeline, phenotypic_activity, phenotypic_consistency
from cloome_hf.profiling.consistency import annotation_column
from cloome_hf.profiling.table import controls_query, metadata_column

from .baseline import FeatureBaseline, load_feature_table
from .stats import proportion_with_ci
from .tasks import get_task, task_names

__all__ = ["JUMP_TASKS", "FeatureBaseline", "activity_task", "consistency_task", "jump_activity",
           "jump_consistency", "jump_profiles", "jump_tasks", "load_feature_table"]

#: the JUMP protocol's tasks (the registry in :mod:`.tasks` owns them)
JUMP_TASKS = task_names("jump")
DEFAULT_PIPELINE = "mad_robustize,sphering"


def jump_profiles(
    embeddings,
    *,
    metadata: pd.DataFrame | None = None,
    pipeline: str | Sequence[str] | None = DEFAULT_PIPELINE,
    controls: str | None = None,
    by: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    batch_column: str = "Metadata_Batch",
    seed: int = 0,
) -> pd.DataFrame:
    """Well profiles of ``embeddings`` (see :func:`cloome_hf.profiling.table.site_profiles`) after ``pipeline``."""
    wells = aggregate(embeddings, by=by, metadata=metadata)
    return normalize(wells, parse_pipeline(pipeline), controls=controls, plate_column=metadata_column(by[0]),
                     batch_column=batch_column, seed=seed)


def activity_task(profiles: pd.DataFrame, *, compound_column: str = "Metadata_InChIKey", controls: str | None = None,
                  null_size: int = 10000, threshold: float = 0.05, seed: int = 0, confidence: float = 0.95,
                  show_progress: bool = False) -> dict:
    """``jump_activity`` result of one method: summary, per-compound rows and the retrieved compounds."""
    res = phenotypic_activity(profiles, compound_column=compound_column, controls=controls, null_size=null_size,
                              threshold=threshold, seed=seed, show_progress=show_progress)
    return _summary(res, profiles, "compound", confidence)


def consistency_task(profiles: pd.DataFrame, annotations: pd.DataFrame | None, *, by: str = "target",
                     inchikey_column: str = "Metadata_InChIKey", annotation_key: str = "Metadata_InChIKey",
                     controls: str | None = None, compounds: Iterable[str] | None = None, null_size: int = 10000,
                     threshold: float = 0.05, seed: int = 0, confidence: float = 0.95,
                     show_progress: bool = False) -> dict:
    """``jump_consistency`` result of one method. ``annotations``: a table with ``annotation_key`` (InChIKeys,
    matched in full or on their first 14 characters) and the ``by`` column; ``None`` takes the labels from the
    profiles' own ``Metadata_{by}`` column. ``compounds``: optional ``inchikey_column`` values to keep."""
    labels = _compound_labels(profiles, annotations, by, inchikey_column, annotation_key)
    res = phenotypic_consistency(profiles, labels, by=labels.columns[1], compound_column=inchikey_column,
                                 controls=controls, compounds=compounds, null_size=null_size, threshold=threshold,
                                 seed=seed, show_progress=show_progress)
    out = _summary(res, profiles, "label", confidence)
    out.update(by=by, n_compounds=res.parameters["n_compounds"])
    return out


def _compound_labels(profiles, annotations, by, key, annotation_key) -> pd.DataFrame:
    """``[key, label]`` rows, one per compound of ``profiles`` with a label (``"|"``-joined lists)."""
    from .runner import moa_labels

    if key not in profiles.columns:
        raise ValueError(f"consistency needs the compound key column {key!r} in the profiles")
    keys = profiles[key].dropna().astype(str).unique()
    if annotations is None:
        column = annotation_column(profiles, by)
        table = profiles[[key, column]].dropna().astype(str)
        joined = table.groupby(key)[column].agg(lambda s: "|".join(sorted(set(s))))
        return pd.DataFrame({key: joined.index, f"label_{by}": joined.to_numpy()})
    labels = moa_labels(keys, annotations, annotation_key, annotation_column(annotations, by))
    found = pd.notna(labels)
    if not found.any():
        raise ValueError(f"no compound of the profiles ({len(keys)} {key} values) is in the annotation table "
                         f"(matched on {annotation_key}, in full or on 14 characters)")
    return pd.DataFrame({key: keys[found], f"label_{by}": labels[found]})


def _summary(res, profiles: pd.DataFrame, kind: str, confidence: float) -> dict:
    table = res.per_group
    rows = [{kind: str(r[res.group_column]), "map": float(r.mean_average_precision), "p_value": float(r.p_value),
             "corrected_p_value": float(r.corrected_p_value), "retrieved": bool(r.below_corrected_p),
             "n_profiles": int(r.n_profiles)} for _, r in table.iterrows()]
    pipeline = profiles.attrs.get("profiling", {}).get("pipeline", [])
    return {
        "pipeline": [step["step"] for step in pipeline],
        "controls": res.parameters.get("controls", ""),
        f"n_{kind}s": res.n_groups,
        "mean_map": res.mean_map,
        "fraction_retrieved": proportion_with_ci(res.n_retrieved, res.n_groups, confidence),
        "threshold": res.threshold,
        "null_size": res.parameters["null_size"],
        "parameters": res.parameters,
        "retrieved": res.retrieved(),
        f"per_{kind}": rows,
    }


def jump_tasks(
    tasks: Sequence[str],
    embeddings,
    *,
    metadata: pd.DataFrame | None = None,
    pipeline: str | Sequence[str] | None = DEFAULT_PIPELINE,
    controls: str | None = None,
    annotations: pd.DataFrame | str | os.PathLike | None = None,
    by: str = "target",
    annotation_key: str = "Metadata_InChIKey",
    active_only: bool = False,
    baseline: FeatureBaseline | None = None,
    model_name: str | None = None,
    output_dir: str | os.PathLike | None = None,
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    show_progress: bool = False,
) -> dict:
    """Run ``tasks`` (names from :data:`JUMP_TASKS`) on the model's embeddings and on an optional baseline.

    Args:
        embeddings: the embeddings dataset (path, table, DataFrame with an ``embedding`` column) or an
            ``(N, D)`` array with ``metadata`` (``plate, well, inchikey, perturbation_type, ...`` per row).
        pipeline: normalisation steps, e.g. ``"mad_robustize,sphering"`` (``None`` / ``""``: raw profiles).
        controls: query of the negative controls (default ``Metadata_pert_type == 'negcon'``).
        annotations: table (or file) with ``annotation_key`` and the ``by`` column (``target`` / ``moa``, or
            ``Metadata_target`` / ``Metadata_moa``), for ``jump_consistency``.
        active_only: consistency only among the compounds that ``jump_activity`` retrieved (the JUMP papers'
            choice; runs activity if it is not among ``tasks``).
        output_dir: where the mAP-vs-p figures go (``jump_activity.png``, ``jump_consistency.png``).

    Returns:
        ``{"tasks": {task: result}, "baselines": {name: {"tasks": {task: result}}}, "figures": {task: path}}``.
    """
    from .figures import plot_map_vs_pvalue

    jump = task_names("jump")
    unknown = [t for t in tasks if t not in jump]
    if unknown:
        raise ValueError(f"unknown JUMP task {unknown[0]!r}; choose from {', '.join(jump)}")
    if "jump_consistency" in tasks and annotations is not None and not isinstance(annotations, pd.DataFrame):
        annotations = load_feature_table(annotations)
    common = dict(null_size=null_size, threshold=threshold, seed=seed, show_progress=show_progress)
    model = jump_profiles(embeddings, metadata=metadata, pipeline=pipeline, controls=controls, seed=seed)
    methods = [(model_name or "CLOOME (this model)", model, controls, "Metadata_InChIKey", "Metadata_InChIKey")]
    if baseline is not None:
        base = _baseline_profiles(baseline, pipeline, controls, seed)
        methods.append((baseline.name, base, baseline.controls or controls, baseline.compound_column,
                        baseline.inchikey_column))
    per_method = []
    for index, (name, profiles, ctrl, compound, key) in enumerate(methods):
        own_labels = index > 0 and any(c in profiles.columns for c in (by, metadata_column(by)))
        per_method.append((name, _method_tasks(
            tasks, profiles, controls=ctrl, compound_column=compound, inchikey_column=key,
            annotations=None if own_labels else annotations, by=by, annotation_key=annotation_key,
            active_only=active_only, **common)))
    out = {"tasks": per_method[0][1], "baselines": {n: {"tasks": r} for n, r in per_method[1:]}, "figures": {}}
    if model_name is not None:
        out["model_name"] = model_name
    if output_dir is not None:
        for task in tasks:
            path = Path(output_dir) / get_task(task).figures[0]
            out["figures"][task] = str(plot_map_vs_pvalue({n: r[task] for n, r in per_method}, path, task))
    return out


def _method_tasks(tasks, profiles, *, controls, compound_column, inchikey_column, annotations, by, annotation_key,
                  active_only, **common) -> dict:
    """The requested tasks on one method's normalised well profiles."""
    results: dict = {}
    if "jump_activity" in tasks or ("jump_consistency" in tasks and active_only):
        results["jump_activity"] = activity_task(profiles, compound_column=compound_column, controls=controls,
                                                 **common)
    if "jump_consistency" in tasks:
        keep = None
        if active_only:
            retrieved = profiles[compound_column].astype(str).isin(set(results["jump_activity"]["retrieved"]))
            keep = profiles.loc[retrieved, inchikey_column].dropna().astype(str)
        results["jump_consistency"] = consistency_task(
            profiles, annotations, by=by, inchikey_column=inchikey_column, annotation_key=annotation_key,
            controls=controls, compounds=keep, **common)
        results["jump_consistency"]["active_only"] = active_only
    return {t: r for t, r in results.items() if t in tasks}


def _baseline_profiles(baseline: FeatureBaseline, pipeline, controls, seed) -> pd.DataFrame:
    table = load_feature_table(baseline.features)
    for col in (baseline.plate_column, baseline.well_column, baseline.compound_column):
        if col not in table.columns:
            raise ValueError(f"baseline {baseline.name!r} lacks column {col!r}")
    query = controls_query(baseline.controls or controls)
    return jump_profiles(table, pipeline=pipeline, controls=query, by=(baseline.plate_column, baseline.well_column),
                         seed=seed)


def jump_activity(embeddings, **kwargs) -> dict:
    """:func:`jump_tasks` with ``["jump_activity"]``."""
    return jump_tasks(["jump_activity"], embeddings, **kwargs)


def jump_consistency(embeddings, **kwargs) -> dict:
    """:func:`jump_tasks` with ``["jump_consistency"]``."""
    return jump_tasks(["jump_consistency"], embeddings, **kwargs)
