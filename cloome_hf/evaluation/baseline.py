"""A features baseline (e.g. CellProfiler profiles) through the same image-only evaluation tasks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .runner import run_tasks


@dataclass
class BaselineColumns:
    """Which columns of a features table hold the molecule, plate, InChIKey and MoA of each row."""

    molecule: str = "Metadata_broad_sample"
    plate: str = "Metadata_Plate"
    inchikey: str = "Metadata_InChIKey14"
    moa: str = "Metadata_moa"


def read_feature_table(path: str, columns: BaselineColumns) -> tuple[pd.DataFrame, np.ndarray]:
    """``(metadata table, standardised (N, F) float32 features)``: numeric non-``Metadata_`` columns, rows with
    non-finite features or no molecule dropped; features standardised (CellProfiler features differ in scale)."""
    table = pd.read_csv(path, low_memory=False)
    for col in (columns.molecule, columns.plate):
        if col not in table.columns:
            raise ValueError(f"{path}: no column {col!r}; columns: {list(table.columns)[:12]}...")
    feats = table[[c for c in table.columns if not c.startswith("Metadata_")]].select_dtypes("number")
    if feats.shape[1] == 0:
        raise ValueError(f"{path}: no numeric feature columns besides the Metadata_* ones")
    table = table[np.isfinite(feats.to_numpy()).all(1) & table[columns.molecule].notna().to_numpy()]
    feats = feats.loc[table.index].to_numpy(np.float32)
    std = feats.std(0)
    return table, (feats - feats.mean(0)) / np.where(std > 0, std, 1.0)


def evaluate_feature_table(path: str, tasks, *, columns: BaselineColumns | None = None, activity=None,
                           seed: int = 0, linear_probe_Cs=None, n_jobs: int = 1, map_null_size: int = 10000) -> dict:
    """Run the image-only ``tasks`` on a features table (one row per site or well, ``Metadata_*`` columns plus
    numeric features). A task the table cannot support is recorded under ``skipped`` with the reason."""
    columns = columns or BaselineColumns()
    table, feats = read_feature_table(path, columns)
    meta = pd.DataFrame({"inchikey": table[columns.molecule].astype(str).to_numpy(),
                         "plate": table[columns.plate].astype(str).to_numpy()})
    out: dict = {"tasks": {}, "skipped": {}, "n_rows": len(meta), "n_features": int(feats.shape[1])}
    for task in tasks:
        if task == "retrieval":
            out["skipped"][task] = "a features table has no molecule encoder"
            continue
        kwargs: dict = {}
        task_meta = meta
        if task == "zeroshot_moa":
            if columns.moa not in table.columns:
                out["skipped"][task] = f"no column {columns.moa!r}"
                continue
            kwargs["moa"] = table[columns.moa].to_numpy(dtype=object)
        if task == "linear_probe":
            if columns.inchikey not in table.columns or activity is None:
                out["skipped"][task] = "no InChIKey column or no activity labels"
                continue
            task_meta = meta.assign(inchikey=table[columns.inchikey].astype(str).to_numpy())
            kwargs.update(activity=activity, linear_probe_Cs=linear_probe_Cs, n_jobs=n_jobs)
        try:
            out["tasks"].update(run_tasks([task], feats, task_meta, seed=seed, map_null_size=map_null_size,
                                          show_progress=False, **kwargs))
        except ValueError as err:
            out["skipped"][task] = str(err)
    return out


__all__ = ["BaselineColumns", "evaluate_feature_table", "read_feature_table"]
