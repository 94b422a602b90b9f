"""A features baseline (e.g. CellProfiler profiles) evaluated beside the model, through the same tasks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .runner import run_tasks


@dataclass
class FeatureBaseline:
    """A features table evaluated beside the model (e.g. CellProfiler well profiles).

    ``features``: CSV / CSV.gz / Parquet path or DataFrame with ``Metadata_*`` columns and numeric features, one
    row per site or well. ``controls``: query of its negative controls (default: the model's). ``compound_column``
    names its compound for activity and the paper's image-only tasks; ``inchikey_column`` its structure key (full or 14-character InChIKey), on
    which consensus profiles are built for consistency and activity labels are matched for the linear probe;
    ``moa_column`` holds the MoA for zero-shot MoA classification. Consistency labels come from the table's own
    ``Metadata_{by}`` column when it has one (CellProfiler LINCS / JUMP tables carry ``Metadata_moa``,
    ``Metadata_target``), else from the annotation table matched on ``inchikey_column``.
    """

    features: str | os.PathLike | pd.DataFrame
    name: str = "CellProfiler features"
    controls: str | None = None
    compound_column: str = "Metadata_broad_sample"
    inchikey_column: str = "Metadata_InChIKey14"
    plate_column: str = "Metadata_Plate"
    well_column: str = "Metadata_Well"
    moa_column: str = "Metadata_moa"


def load_feature_table(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """A features table from a DataFrame or a CSV / CSV.gz / TSV / Parquet file; refuses an unreadable file,
    naming it."""
    if isinstance(source, pd.DataFrame):
        return source.copy()
    from ..data.remote import read_table

    return read_table(source, "feature", as_text=False)[0]


def read_feature_table(baseline: FeatureBaseline) -> tuple[pd.DataFrame, np.ndarray]:
    """``(metadata table, standardised (N, F) float32 features)``: numeric non-``Metadata_`` columns, rows with
    non-finite features or no molecule dropped; features standardised (CellProfiler features differ in scale)."""
    table = load_feature_table(baseline.features)
    for col in (baseline.compound_column, baseline.plate_column):
        if col not in table.columns:
            raise ValueError(f"{baseline.name} table: no column {col!r}; columns: {list(table.columns)[:12]}...")
    feats = table[[c for c in table.columns if not c.startswith("Metadata_")]].select_dtypes("number")
    if feats.shape[1] == 0:
        raise ValueError(f"{baseline.name} table: no numeric feature columns besides the Metadata_* ones")
    table = table[np.isfinite(feats.to_numpy()).all(1) & table[baseline.compound_column].notna().to_numpy()]
    feats = feats.loc[table.index].to_numpy(np.float32)
    std = feats.std(0)
    return table, (feats - feats.mean(0)) / np.where(std > 0, std, 1.0)


def evaluate_feature_table(baseline: FeatureBaseline, tasks, *, activity=None,
                           seed: int = 0, linear_probe_Cs=None, n_jobs: int = 1, map_null_size: int = 10000) -> dict:
    """Run the image-only ``tasks`` on a features table (one row per site or well, ``Metadata_*`` columns plus
    numeric features). A task the table cannot support is recorded under ``skipped`` with the reason."""
    table, feats = read_feature_table(baseline)
    meta = pd.DataFrame({"inchikey": table[baseline.compound_column].astype(str).to_numpy(),
                         "plate": table[baseline.plate_column].astype(str).to_numpy()})
    out: dict = {"tasks": {}, "skipped": {}, "n_rows": len(meta), "n_features": int(feats.shape[1])}
    for task in tasks:
        if task == "retrieval":
            out["skipped"][task] = "a features table has no molecule encoder"
            continue
        kwargs: dict = {}
        task_meta = meta
        if task == "zeroshot_moa":
            if baseline.moa_column not in table.columns:
                out["skipped"][task] = f"no column {baseline.moa_column!r}"
                continue
            kwargs["moa"] = table[baseline.moa_column].to_numpy(dtype=object)
        if task == "linear_probe":
            if baseline.inchikey_column not in table.columns or activity is None:
                out["skipped"][task] = "no InChIKey column or no activity labels"
                continue
            task_meta = meta.assign(inchikey=table[baseline.inchikey_column].astype(str).to_numpy())
            kwargs.update(activity=activity, linear_probe_Cs=linear_probe_Cs, n_jobs=n_jobs)
        try:
            out["tasks"].update(run_tasks([task], feats, task_meta, seed=seed, map_null_size=map_null_size,
                                          show_progress=False, **kwargs))
        except ValueError as err:
            out["skipped"][task] = str(err)
    return out


__all__ = ["FeatureBaseline", "evaluate_feature_table", "load_feature_table", "read_feature_table"]
