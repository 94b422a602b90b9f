"""Profiles tables: the ``Metadata_*`` convention, readers of the embeddings dataset, controls and provenance.

A *profiles table* is a ``pandas.DataFrame`` with one row per site, well or compound. Columns whose name starts
with ``Metadata_`` are metadata (pycytominer's convention); every other column is a numeric feature (an
embedding dimension ``emb_0000 ... emb_0511`` or a CellProfiler measurement). The embeddings dataset that
``cloome embed`` writes (``sample_key, plate, well, site, inchikey, smiles, perturbation_type, embedding``) becomes
such a table through :func:`site_profiles`, with its columns renamed by :data:`METADATA_NAMES`.

Which steps made a table is recorded in ``profiles.attrs["profiling"]`` (kept by pandas through copies and
written into Parquet metadata by ``DataFrame.to_parquet``).
"""

from __future__ import annotations

import copy
import re
from typing import Sequence

import numpy as np
import pandas as pd

from ..data.schema import PERTURBATION_TYPES  # noqa: F401  (re-exported by cloome_hf.profiling)

METADATA_PREFIX = "Metadata_"
EMBEDDING_PREFIX = "emb_"
#: Embeddings-dataset column -> profiles-table metadata column (JUMP / pycytominer spelling).
METADATA_NAMES = {
    "sample_key": "Metadata_sample_key",
    "plate": "Metadata_Plate",
    "well": "Metadata_Well",
    "site": "Metadata_Site",
    "inchikey": "Metadata_InChIKey",
    "smiles": "Metadata_SMILES",
    "perturbation_type": "Metadata_pert_type",
    "batch": "Metadata_Batch",
    "source": "Metadata_Source",
}
PERT_TYPE_COLUMN = METADATA_NAMES["perturbation_type"]
DEFAULT_CONTROLS = f"{PERT_TYPE_COLUMN} == 'negcon'"
_BARE_VALUE = re.compile(r"^[A-Za-z0-9_.\-]+$")

__all__ = [
    "DEFAULT_CONTROLS", "METADATA_NAMES", "PERTURBATION_TYPES", "check_finite", "control_mask", "controls_query",
    "feature_columns", "metadata_column", "metadata_columns", "record_step", "require_columns", "site_profiles",
]


def metadata_column(name: str) -> str:
    """``"plate"`` -> ``"Metadata_Plate"`` (via :data:`METADATA_NAMES`), ``"batch_id"`` -> ``"Metadata_batch_id"``;
    a name that already starts with ``Metadata_`` is returned as is."""
    if name.startswith(METADATA_PREFIX):
        return name
    return METADATA_NAMES.get(name, METADATA_PREFIX + name)


def metadata_columns(profiles: pd.DataFrame) -> list[str]:
    return [c for c in profiles.columns if str(c).startswith(METADATA_PREFIX)]


def feature_columns(profiles: pd.DataFrame) -> list[str]:
    """The feature columns (every column not named ``Metadata_*``); refuses a non-numeric one, naming it."""
    feats = [c for c in profiles.columns if not str(c).startswith(METADATA_PREFIX)]
    if not feats:
        raise ValueError(f"profiles table has no feature columns (all of {list(profiles.columns)[:8]}... are "
                         "Metadata_*)")
    bad = [c for c in feats if not pd.api.types.is_numeric_dtype(profiles[c])]
    if bad:
        raise ValueError(f"feature column(s) {bad[:5]} are not numeric; metadata columns must be named "
                         "'Metadata_*'")
    return feats


def site_profiles(embeddings, metadata: pd.DataFrame | None = None) -> pd.DataFrame:
    """A profiles table (one row per input row) from any form of embeddings.

    Args:
        embeddings: one of
            * an embeddings dataset as ``cloome embed`` writes it: its folder (``OUT`` or ``OUT/images``), a
              Parquet file, a ``pyarrow.Table`` or ``datasets.Dataset`` with an ``embedding`` column
              (fixed-size list ``(D,)`` per row) and metadata columns;
            * a ``DataFrame`` with an ``embedding`` column (one ``(D,)`` array per row);
            * a ``DataFrame`` that already is a profiles table (``Metadata_*`` + numeric features): returned
              as a copy;
            * an ``(N, D)`` array, with ``metadata`` (``N`` rows) alongside.
        metadata: only with an array: the per-row metadata (``plate, well, inchikey, ...``).

    Returns:
        ``DataFrame``: renamed metadata columns (:func:`metadata_column`), then ``emb_0000 ...`` float32 columns.
    """
    if isinstance(embeddings, pd.DataFrame) and "embedding" not in embeddings.columns:
        if metadata is not None:
            raise ValueError("metadata= goes with an (N, D) array, not with a profiles DataFrame")
        feature_columns(embeddings)
        return embeddings.copy()
    if isinstance(embeddings, np.ndarray):
        if metadata is None or len(metadata) != len(embeddings) or embeddings.ndim != 2:
            raise ValueError(f"an (N, D) embeddings array needs metadata with N rows; got array "
                             f"{embeddings.shape} and metadata of {None if metadata is None else len(metadata)} rows")
        values, meta = np.asarray(embeddings, dtype=np.float32), metadata.reset_index(drop=True)
    else:
        if metadata is not None:
            raise ValueError("metadata= goes with an (N, D) array only")
        values, meta = _read_embeddings(embeddings)
    meta = meta.rename(columns={c: metadata_column(str(c)) for c in meta.columns})
    dupes = meta.columns[meta.columns.duplicated()].tolist()
    if dupes:
        raise ValueError(f"metadata columns {dupes} appear twice after renaming to the Metadata_ convention")
    width = max(4, len(str(values.shape[1] - 1)))
    feats = pd.DataFrame(values, columns=[f"{EMBEDDING_PREFIX}{i:0{width}d}" for i in range(values.shape[1])])
    out = pd.concat([meta, feats], axis=1)
    out.attrs["profiling"] = {"source": "embeddings", "dimensions": int(values.shape[1])}
    return out


def _read_embeddings(source) -> tuple[np.ndarray, pd.DataFrame]:
    """(N, D) float32 values and the metadata DataFrame of an embeddings dataset, read through the one reader
    of embeddings (:func:`cloome_hf.inference.store.read_embeddings`)."""
    import os

    from ..inference.store import embeddings_from_arrow, read_embeddings

    if isinstance(source, (str, os.PathLike)) and os.path.isdir(os.path.join(source, "images")):
        source = os.path.join(source, "images")  # the OUT folder of `cloome embed`
    table = read_embeddings(source)
    if "embedding" not in table.column_names:
        raise ValueError(f"embeddings dataset {source!r} has no 'embedding' column; has {table.column_names}")
    values = embeddings_from_arrow(table.column("embedding"))
    meta = table.drop(["embedding"]).to_pandas()
    return values, meta


def controls_query(controls: str | None) -> str:
    """The pandas query selecting the negative controls.

    ``None`` -> :data:`DEFAULT_CONTROLS`; a bare perturbation type (``"negcon"``) -> ``Metadata_pert_type ==
    'negcon'``; anything else is used as a query (``"Metadata_broad_sample == 'DMSO'"``), as pycytominer's
    ``samples=`` argument.
    """
    if controls is None:
        return DEFAULT_CONTROLS
    controls = str(controls).strip()
    if not controls:
        raise ValueError("controls is empty; give a query such as \"Metadata_pert_type == 'negcon'\"")
    if _BARE_VALUE.match(controls):
        return f"{PERT_TYPE_COLUMN} == '{controls}'"
    return controls


def control_mask(profiles: pd.DataFrame, controls: str | None, where: str = "profiles") -> np.ndarray:
    """``(N,)`` bool: rows matching the controls query. Refuses a query that fails or matches nothing."""
    query = controls_query(controls)
    try:
        index = profiles.query(query).index
    except Exception as err:  # pandas raises many types for a bad expression or a missing column
        raise ValueError(f"controls query {query!r} cannot be evaluated on the {where} table "
                         f"(metadata columns: {metadata_columns(profiles)}): {err}") from err
    mask = profiles.index.isin(index)
    if not mask.any():
        raise ValueError(f"controls query {query!r} matches no row of the {where} table")
    return np.asarray(mask)


def require_columns(profiles: pd.DataFrame, columns: Sequence[str], purpose: str) -> None:
    missing = [c for c in columns if c not in profiles.columns]
    if missing:
        raise ValueError(f"{purpose} needs column(s) {missing}; the profiles table has metadata "
                         f"{metadata_columns(profiles)}")


def record_step(result: pd.DataFrame, source: pd.DataFrame, key: str, entry: dict) -> pd.DataFrame:
    """Copy ``source``'s provenance onto ``result`` and add ``entry``: under ``key`` (``"aggregate"``), or
    appended to the ``"pipeline"`` list when ``key == "pipeline"``."""
    info = copy.deepcopy(source.attrs.get("profiling", {}))
    if key == "pipeline":
        info["pipeline"] = list(info.get("pipeline", [])) + [entry]
    else:
        info[key] = entry
    result.attrs["profiling"] = info
    return result


def check_finite(profiles: pd.DataFrame, feats: Sequence[str], purpose: str, *, values: np.ndarray | None = None,
                 rows: np.ndarray | None = None) -> None:
    """Refuse NaN / inf features, naming the first bad row's plate and well (or index). ``values``: the features
    as an array already (not copied again); ``rows``: ``(N,)`` bool, only these rows are checked."""
    values = profiles[list(feats)].to_numpy() if values is None else values
    bad = ~np.isfinite(values).all(axis=1)
    if rows is not None:
        bad &= rows
    if bad.any():
        row = profiles.iloc[int(np.flatnonzero(bad)[0])]
        where = ", ".join(f"{c}={row[c]}" for c in ("Metadata_Plate", "Metadata_Well") if c in profiles.columns)
        raise ValueError(f"{purpose}: {int(bad.sum())} profile(s) have NaN or infinite features, the first at "
                         f"{where or f'row {row.name}'}")
