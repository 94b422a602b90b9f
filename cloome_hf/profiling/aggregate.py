"""Site -> well -> compound profiles with pycytominer's ``aggregate``."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from .table import feature_columns, metadata_column, metadata_columns, record_step, require_columns, site_profiles

__all__ = ["aggregate"]

PLATE = "Metadata_Plate"


def aggregate(
    embeddings,
    by: Sequence[str] | str = ("plate", "well"),
    method: str = "median",
    metadata: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Aggregate rows into profiles, one per ``by`` group, with ``pycytominer.aggregate``.

    Args:
        embeddings: anything :func:`~cloome_hf.profiling.table.site_profiles` reads (embeddings dataset, its
            folder, a profiles DataFrame, an ``(N, D)`` array with ``metadata``).
        by: grouping columns, as embeddings-dataset names (``"plate"``, ``"well"``, ``"inchikey"``) or
            ``Metadata_*`` names. ``("plate", "well")`` gives well profiles; ``("inchikey",)`` compound
            consensus profiles.
        method: ``"median"`` or ``"mean"`` (pycytominer's ``operation``).

    Returns:
        The profiles table: the ``by`` columns, every other metadata column that is constant within each group
        (perturbation type, InChIKey, batch, ...; columns that vary, like ``Metadata_Site``, are dropped), and the
        aggregated features (float64, pycytominer's dtype), sorted by ``by``. ``attrs["profiling"]["aggregate"]``
        records ``by`` and ``method``.
    """
    from pycytominer import aggregate as pycytominer_aggregate

    if method not in ("median", "mean"):
        raise ValueError(f"aggregation method {method!r} is not 'median' or 'mean'")
    profiles = site_profiles(embeddings, metadata)
    strata = [metadata_column(c) for c in ([by] if isinstance(by, str) else list(by))]
    require_columns(profiles, strata, f"aggregating by {strata}")
    if profiles[strata].isna().any().any():
        bad = profiles.loc[profiles[strata].isna().any(axis=1)].index[0]
        raise ValueError(f"row {bad} has a missing value in the grouping column(s) {strata}")
    feats = feature_columns(profiles)
    # pycytominer copies the features to float64: aggregating plate by plate bounds that copy to one plate
    parts = [profiles] if PLATE not in strata else [part for _, part in profiles.groupby(PLATE, sort=True)]
    out = pd.concat([pycytominer_aggregate(part, strata=strata, features=feats, operation=method, output_file=None)
                     for part in parts], ignore_index=True)
    out = _constant_metadata(profiles, strata).merge(out, on=strata, how="right")
    return record_step(out, profiles, "aggregate", {"by": strata, "method": method, "library": "pycytominer"})


def _constant_metadata(profiles: pd.DataFrame, strata: list[str]) -> pd.DataFrame:
    """One row per group: the grouping columns plus each metadata column with a single value in every group."""
    others = [c for c in metadata_columns(profiles) if c not in strata]
    groups = profiles[strata + others].groupby(strata, sort=True, dropna=False)
    if not others:
        return groups.size().reset_index()[strata]
    varying = groups.nunique(dropna=False).max()
    keep = [c for c in others if varying[c] <= 1]
    return groups[keep].first().reset_index() if keep else groups.size().reset_index()[strata]
