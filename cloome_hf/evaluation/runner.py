"""Run the evaluation tasks on embeddings.

Sites are embedded once through the one encoder path (:func:`cloome_hf.inference.encode_dataset`: every site,
and every unique molecule once, shared across ``accelerate`` processes); :func:`run_tasks` runs any of the five
tasks on those embeddings (or on a features table for a baseline) and returns the results dict that
:mod:`.report` renders.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.splits import one_site_per_molecule
from .linear_probe import aggregate_by_molecule, linear_probe, molecule_split
from .replicate_map import replicate_map
from .retrieval import retrieval_metrics
from .zeroshot import zeroshot_classification

__all__ = ["TASKS", "moa_labels", "run_tasks"]

TASKS = ("retrieval", "zeroshot_molecule", "zeroshot_moa", "linear_probe", "map")


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
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    keys = metadata["inchikey"].astype(str).to_numpy()
    plates = metadata["plate"].astype(str).to_numpy()
    results: dict = {}
    for task in tasks:
        if task == "retrieval":
            if molecule is None:
                raise ValueError("retrieval needs molecule embeddings")
            sub = one_site_per_molecule(keys, seed)
            results[task] = retrieval_metrics(image[sub], molecule[molecule_index[sub]], seed=seed,
                                              show_progress=show_progress)
            results[task]["sites"] = "one seeded random site per molecule"
        elif task == "zeroshot_molecule":
            results[task] = zeroshot_classification(image, keys, keys, plates, seed=seed)
        elif task == "zeroshot_moa":
            if moa is None:
                raise ValueError("zeroshot_moa needs MoA labels (--moa_annotations or --moa_column)")
            results[task] = zeroshot_classification(image, moa, keys, plates, seed=seed)
        elif task == "linear_probe":
            if activity is None or activity.inchikeys is None:
                raise ValueError("linear_probe needs an activity label matrix with its row InChIKey index")
            results[task] = _linear_probe(image, keys, activity, seed, linear_probe_Cs, n_jobs, show_progress)
        elif task == "map":
            results[task] = replicate_map(image, keys, null_size=map_null_size, seed=seed,
                                          show_progress=show_progress)
    return results


def _linear_probe(image, keys, activity, seed, Cs, n_jobs, show_progress) -> dict:
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
