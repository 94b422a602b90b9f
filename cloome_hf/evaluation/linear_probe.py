"""Linear probing for activity prediction (CLOOME paper, Table 2).

A sparse multi-task label matrix (molecules × assays; +1 active, −1 inactive, anything else unknown) is split
by molecule into train / validation / test. For every task with both classes present in train and in
validation (and in test, without which ROC-AUC is undefined), an L2 logistic regression with balanced class
weights is fitted on the standardised molecule-level features for each ``C`` in the grid, ``C`` is chosen by
validation ROC-AUC, the model is refitted on train + validation, and test ROC-AUC and F1 (threshold 0.5,
active = positive) are reported. Tasks run in parallel with joblib.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse as sp
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from .stats import proportion_with_ci

__all__ = [
    "DEFAULT_C_GRID",
    "ActivityLabels",
    "load_activity_matrix",
    "molecule_split",
    "aggregate_by_molecule",
    "linear_probe",
]

DEFAULT_C_GRID: tuple[float, ...] = tuple(10.0**e for e in range(-6, 7))  # 1e-6 ... 1e6, 13 values
SPLITS = ("train", "validation", "test")
AUC_THRESHOLDS = (0.9, 0.8, 0.7)


@dataclass
class ActivityLabels:
    """A label matrix with its row (compound InChIKey) and column (assay id) names."""

    matrix: sp.csr_matrix  # (n_compounds, n_tasks) int8 in {+1, -1, 0 = unknown}
    inchikeys: list[str] | None
    assay_ids: list[str] | None


def load_activity_matrix(mtx_path, row_index_path=None, column_index_path=None) -> ActivityLabels:
    """Read a MatrixMarket label matrix and its optional ``INDEX,INCHIKEY`` / ``ASSAY_ID`` index CSVs."""
    mtx_path = Path(mtx_path)
    try:
        matrix = sp.csr_matrix(scipy.io.mmread(mtx_path))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read MatrixMarket label matrix {mtx_path}: {err}") from err
    bad = ~np.isin(matrix.data, (-1, 1))
    if bad.any():
        raise ValueError(f"{mtx_path}: labels must be +1 or -1, found {matrix.data[bad][0]!r}")
    matrix = matrix.astype(np.int8)
    inchikeys = assay_ids = None
    if row_index_path is not None:
        from ..data.remote import read_table

        rows, _ = read_table(row_index_path, "activity row index", as_text=False)
        if "INCHIKEY" not in rows.columns or len(rows) != matrix.shape[0]:
            raise ValueError(
                f"{row_index_path}: need an INCHIKEY column with {matrix.shape[0]} rows, got columns "
                f"{list(rows.columns)} and {len(rows)} rows"
            )
        order = rows["INDEX"].to_numpy() if "INDEX" in rows.columns else np.arange(len(rows))
        inchikeys = [None] * len(rows)
        for i, key in zip(order, rows["INCHIKEY"].astype(str)):
            inchikeys[int(i)] = key
    if column_index_path is not None:
        from ..data.remote import read_table

        cols, _ = read_table(column_index_path, "activity column index")
        if len(cols) != matrix.shape[1]:
            raise ValueError(f"{column_index_path}: has {len(cols)} rows, matrix has {matrix.shape[1]} columns")
        assay_ids = cols.iloc[:, 0].tolist()
    return ActivityLabels(matrix, inchikeys, assay_ids)


def molecule_split(keys, fractions=(0.6, 0.2, 0.2), seed: int = 0) -> np.ndarray:
    """The probe's seeded train / validation / test split: all rows of one molecule share a split.

    The package's one molecule split (:func:`cloome_hf.data.splits.assign_molecules`) applied to row keys.

    Returns:
        ``(N,)`` array of ``"train"`` / ``"validation"`` / ``"test"``.
    """
    from ..data.splits import assign_molecules

    if len(fractions) != 3:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    keys = np.asarray(keys, dtype=object).astype(str)
    assignment = assign_molecules(keys.tolist(), dict(zip(SPLITS, fractions)), seed)
    return np.array([assignment[k] for k in keys], dtype=str)


def aggregate_by_molecule(embeds, keys) -> tuple[np.ndarray, np.ndarray]:
    """Mean embedding per molecule: ``(unique_keys (M,), features (M, D))``, keys sorted."""
    embeds = np.asarray(embeds, dtype=np.float64)
    unique, inverse = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(unique), embeds.shape[1]))
    np.add.at(sums, inverse, embeds)
    return unique, (sums / np.bincount(inverse)[:, None]).astype(np.float32)


def _fit(x, y, C, seed, max_iter):
    scaler = StandardScaler().fit(x)
    # Balanced class weights: activity tasks are imbalanced, and without them a strongly regularised model
    # predicts only the majority class, which makes F1 at threshold 0.5 zero whatever the AUC.
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed, class_weight="balanced")
    with warnings.catch_warnings():
        # Extreme C values may stop at max_iter; the grid search judges them by validation AUC anyway.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(x), y)
    return scaler, clf


def _probe_task(task, data, Cs, seed, max_iter) -> dict:
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data
    val_aucs = []
    for C in Cs:
        scaler, clf = _fit(x_tr, y_tr, C, seed, max_iter)
        val_aucs.append(roc_auc_score(y_va, clf.predict_proba(scaler.transform(x_va))[:, 1]))
    best = int(np.argmax(val_aucs))  # first (smallest, most regularised) C on ties
    scaler, clf = _fit(np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va]), Cs[best], seed, max_iter)
    x_te = scaler.transform(x_te)
    return {
        "task": task,
        "C": float(Cs[best]),
        "val_auc": float(val_aucs[best]),
        "test_auc": float(roc_auc_score(y_te, clf.predict_proba(x_te)[:, 1])),
        "test_f1": float(f1_score(y_te, clf.predict(x_te), zero_division=0.0)),
        "n_train": int(len(y_tr)),
        "n_validation": int(len(y_va)),
        "n_test": int(len(y_te)),
    }


def linear_probe(
    features,
    labels,
    split,
    *,
    Cs=DEFAULT_C_GRID,
    task_names=None,
    n_jobs: int = 1,
    seed: int = 0,
    max_iter: int = 1000,
    confidence: float = 0.95,
    show_progress: bool = True,
) -> dict:
    """Per-task logistic-regression probes on fixed features.

    Args:
        features: ``(M, D)`` molecule-level features (e.g. :func:`aggregate_by_molecule` of image embeddings).
        labels: ``(M, T)`` sparse or dense matrix, +1 active, −1 inactive, anything else unknown; row ``i``
            belongs to ``features[i]``.
        split: ``(M,)`` of ``"train"`` / ``"validation"`` / ``"test"`` (see :func:`molecule_split`).
        Cs: inverse regularisation strengths searched (default ``1e-6 … 1e6``).
        task_names: optional ``(T,)`` names used in ``per_task``.
        n_jobs: joblib workers over tasks (-1 = all cores).

    Returns:
        dict with ``n_tasks``, ``n_tasks_evaluated``, ``auc`` / ``f1`` as ``{"mean", "std"}``,
        ``auc_above`` ``{"0.9": {"count", "value", "ci_low", "ci_high", ...}, ...}``, ``per_task`` rows,
        ``skipped`` (task -> reason), ``C_grid`` and the ``random`` baseline (AUC 0.5).
    """
    x = np.asarray(features, dtype=np.float32)
    y_all = sp.csc_matrix(labels) if not sp.issparse(labels) else labels.tocsc()
    split = np.asarray(split).astype(str)
    if x.ndim != 2 or y_all.shape[0] != x.shape[0] or split.shape != (x.shape[0],):
        raise ValueError(
            f"features {x.shape}, labels {y_all.shape} and split {split.shape} must agree on the number of rows"
        )
    unknown = sorted(set(split) - set(SPLITS))
    if unknown:
        raise ValueError(f"split values must be train/validation/test, got {unknown[0]!r}")
    if len(Cs) == 0:
        raise ValueError("Cs must hold at least one value")
    n_tasks = y_all.shape[1]
    names = list(task_names) if task_names is not None else [str(t) for t in range(n_tasks)]
    if len(names) != n_tasks:
        raise ValueError(f"task_names has {len(names)} entries, labels has {n_tasks} columns")

    jobs, skipped = [], {}
    for t in range(n_tasks):
        col = y_all[:, t]
        rows, vals = col.indices, col.data
        keep = np.isin(vals, (-1, 1))
        rows, y = rows[keep], (vals[keep] == 1).astype(np.int8)
        parts = []
        for name in SPLITS:
            sel = split[rows] == name
            parts.append((x[rows[sel]], y[sel]))
        missing = [name for name, (_, ys) in zip(SPLITS, parts) if len(np.unique(ys)) < 2]
        if missing:
            skipped[names[t]] = f"not both classes in {'/'.join(missing)}"
            continue
        jobs.append((names[t], parts))

    parallel = Parallel(n_jobs=n_jobs, return_as="generator")
    results = parallel(delayed(_probe_task)(name, parts, tuple(Cs), seed, max_iter) for name, parts in jobs)
    per_task = list(tqdm(results, total=len(jobs), desc="linear probe", disable=not show_progress))

    aucs = np.array([r["test_auc"] for r in per_task])
    f1s = np.array([r["test_f1"] for r in per_task])
    out: dict = {
        "n_tasks": int(n_tasks),
        "n_tasks_evaluated": len(per_task),
        "auc": _mean_std(aucs),
        "f1": _mean_std(f1s),
        "auc_above": {},
        "C_grid": [float(c) for c in Cs],
        "per_task": per_task,
        "skipped": skipped,
        "random": {"auc": 0.5},
    }
    for thr in AUC_THRESHOLDS:
        count = int((aucs > thr).sum())
        entry = {"count": count}
        if len(aucs):
            entry.update(proportion_with_ci(count, len(aucs), confidence))
        out["auc_above"][str(thr)] = entry
    return out


def _mean_std(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": float(values.mean()), "std": float(values.std(ddof=0))}
