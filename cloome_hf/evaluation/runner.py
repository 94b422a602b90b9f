"""Run the evaluation tasks on embeddings.

Sites are embedded once through the one encoder path (:func:`cloome_hf.inference.encode_dataset`: every site,
and every unique molecule once, shared across ``accelerate`` processes); :func:`run_tasks` runs any of the five
tasks on those embeddings (or on a features table for a baseline) and returns the results dict that
:mod:`.report` renders.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .linear_probe import aggregate_by_molecule, linear_probe, molecule_split
from .tasks import TaskInputs, get_task, task_names

__all__ = ["TASKS", "moa_labels", "probe_activity", "run_tasks"]

#: the paper's tasks, in report order (the registry in :mod:`.tasks` owns them)
TASKS = task_names("paper")


def moa_labels(inchikeys, annotations: pd.DataFrame, key_column: str, moa_column: str) -> np.ndarray:
    """MoA of each InChIKey from an annotation table, matched on the full key, else on its first 14 characters.

    Keys with several different MoAs get them joined with ``|`` (a class of its own); unknown keys get None.
    """
    for col in (key_column, moa_column):
        if col not in annotations.columns:
            raise ValueError(f"MoA annotation table has no column {col!r}; columns: {list(annotations.columns)}")
    ann = annotations[[key_column, moa_column]].dropna()
    ann = ann.assign(**{key_column: ann[key_column].astype(str), moa_column: ann[moa_column].astype(str)})
    full = ann.groupby(key_column)[moa_column].agg(lambda s: "|".join(sorted(set(s))))
    short = ann.assign(k=ann[key_column].str[:14]).groupby("k")[moa_column].agg(lambda s: "|".join(sorted(set(s))))
    keys = pd.Series(list(inchikeys), dtype=object).astype(str)
    out = keys.map(full)
    out = out.where(out.notna(), keys.str[:14].map(short))
    return out.astype(object).where(out.notna(), None).to_numpy()


def run_tasks(
    tasks,
    image,
    metadata: pd.DataFrame,
    *,
    molecule=None,
    molecule_index=None,
    moa=None,
    activity=None,
    seed: int = 0,
    linear_probe_Cs=None,
    n_jobs: int = 1,
    map_null_size: int = 10000,
    show_progress: bool = True,
) -> dict:
    """Run ``tasks`` (names from :data:`TASKS`) on site embeddings.

    Args:
        image: ``(N, D)`` site embeddings (or baseline features).
        metadata: ``N`` rows with ``inchikey`` (molecule key) and ``plate``.
        molecule / molecule_index: unique-molecule embeddings and each site's row in them (retrieval only).
        moa: ``(N,)`` MoA labels (None = unannotated), for ``zeroshot_moa``.
        activity: :class:`~cloome_hf.evaluation.linear_probe.ActivityLabels` with ``inchikeys``, for
            ``linear_probe``; molecules are matched on the full key, else on its first 14 characters.
    """
    paper = task_names("paper")  # read now, so a task registered after import runs too
    unknown = [t for t in tasks if t not in paper]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; choose from {', '.join(paper)}")
    inputs = TaskInputs(image, metadata["inchikey"].astype(str).to_numpy(), metadata["plate"].astype(str).to_numpy(),
                        molecule=molecule, molecule_index=molecule_index, moa=moa, activity=activity, seed=seed,
                        linear_probe_Cs=linear_probe_Cs, n_jobs=n_jobs, map_null_size=map_null_size,
                        show_progress=show_progress)
    results: dict = {}
    for name in tasks:
        task = get_task(name)
        missing = [need for need in task.requires if getattr(inputs, need) is None]
        if missing:
            raise ValueError(task.missing)
        results[name] = task.run(inputs)
    return results


def probe_activity(image, keys, activity, seed, Cs, n_jobs, show_progress) -> dict:
    """``linear_probe`` on per-molecule mean embeddings against the rows of ``activity`` matched by InChIKey."""
    mol_keys, feats = aggregate_by_molecule(image, keys)
    rows = pd.Series(range(len(activity.inchikeys)), index=activity.inchikeys)
    rows = rows[~rows.index.duplicated()]
    short = pd.Series(rows.to_numpy(), index=[k[:14] for k in rows.index])
    short = short[~short.index.duplicated()]
    found = pd.Series(mol_keys).map(rows)
    found = found.where(found.notna(), pd.Series(mol_keys).str[:14].map(short))
    ok = found.notna().to_numpy()
    if ok.sum() < 3:
        raise ValueError(f"only {int(ok.sum())} of {len(mol_keys)} molecules are rows of the activity matrix")
    labels = activity.matrix[found[ok].astype(int).to_numpy()]
    split = molecule_split(mol_keys[ok], seed=seed)
    kwargs = {} if Cs is None else {"Cs": tuple(Cs)}
    res = linear_probe(feats[ok], labels, split, task_names=activity.assay_ids, n_jobs=n_jobs, seed=seed,
                       show_progress=show_progress, **kwargs)
    res["n_molecules_matched"] = int(ok.sum())
    return res
