"""Phenotypic activity: can a compound's wells be told apart from the negative controls of their plates?

The JUMP consortium's recipe (jump-profiling-recipe, ``average_precision_negcon``), computed with copairs:

* every treated well is a query; its **positives** are the other wells of the same compound (any plate);
* its **negatives** are the wells that share its plate and differ from it in perturbation type and compound,
  i.e. the plate's negative controls (each control gets its own id, so controls are never each other's
  positives and are not scored);
* compounds with 2 to 1000 treated wells take part; positive controls are left out by default;
* per compound, mAP over its wells, a permutation p-value from a null of 10,000 random rankings (seed 0),
  Benjamini-Hochberg correction, and "retrieved" = corrected p < 0.05.

Activity is a per-plate question, so the wells are scored in chunks of whole plates (with the compounds'
replicates on other plates as positives): memory stays bounded however many plates there are (copairs issue
#90 ran out of 14 GB at about 9,000 wells in one call) and each well's AP is the one a single call would give.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .results import MapResult, summarize_map
from .table import PERT_TYPE_COLUMN, check_finite, control_mask, controls_query, feature_columns, require_columns

__all__ = ["phenotypic_activity"]

_GROUP, _PLATE, _ROLE = "_cloome_group", "_cloome_plate", "_cloome_role"


def phenotypic_activity(
    profiles: pd.DataFrame,
    *,
    compound_column: str = "Metadata_InChIKey",
    plate_column: str = "Metadata_Plate",
    controls: str | None = None,
    treatments: Sequence[str] = ("trt",),
    pert_type_column: str = PERT_TYPE_COLUMN,
    min_replicates: int = 2,
    max_replicates: int = 1000,
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    chunk_size: int = 20000,
    distance: str = "cosine",
    show_progress: bool = False,
) -> MapResult:
    """Per-compound mAP of retrieving a compound's wells against its plates' negative controls.

    Args:
        profiles: well profiles (``Metadata_*`` + features), normalised or not.
        compound_column: the compound id (``Metadata_InChIKey``; ``Metadata_JCP2022`` or
            ``Metadata_broad_sample`` in JUMP / LINCS tables).
        controls: query of the negative controls (default ``Metadata_pert_type == 'negcon'``).
        treatments: values of ``pert_type_column`` that are scored (the column may be absent: then every
            non-control well is a treatment).
        min_replicates, max_replicates: compounds with a number of treated wells outside this range are left out.
        null_size, threshold, seed: copairs' permutation null, significance level and seed.
        chunk_size: about how many query wells one copairs call scores (whole plates per chunk).

    Returns:
        :class:`~.results.MapResult` with one row per compound in ``per_group`` (group column
        ``compound_column``) and one per treated well in ``average_precision``.
    """
    from copairs.map import mean_average_precision

    require_columns(profiles, [compound_column, plate_column], "phenotypic activity")
    feats = feature_columns(profiles)
    query, is_control = controls_query(controls), control_mask(profiles, controls)
    scored, excluded = _scored_wells(profiles, is_control, compound_column, treatments, pert_type_column,
                                     min_replicates, max_replicates)
    plates = profiles[plate_column].astype(str).to_numpy()
    without = sorted(set(plates[scored]) - set(plates[is_control]))
    if without:
        raise ValueError(f"plate(s) {without[:5]} have treated wells but no negative control ({query})")
    meta = pd.DataFrame({
        _GROUP: np.where(is_control, [f"__control_{i}__" for i in range(len(profiles))],
                         profiles[compound_column].astype(str).to_numpy()),
        _PLATE: plates,
        _ROLE: np.where(is_control, "negcon", "trt"),
    })
    values = profiles[feats].to_numpy()
    check_finite(profiles, feats, "phenotypic activity", values=values, rows=scored | is_control)
    ap = _chunked_average_precision(meta, values, scored, is_control, chunk_size, distance, show_progress)
    del values
    maps = mean_average_precision(ap, [_GROUP], null_size=null_size, threshold=threshold, seed=seed,
                                  progress_bar=show_progress)
    ap = pd.concat([profiles.drop(columns=feats).iloc[ap.index].reset_index(drop=True),
                    ap.drop(columns=[_GROUP, _PLATE, _ROLE]).reset_index(drop=True)], axis=1)
    per_compound = summarize_map(maps.rename(columns={_GROUP: compound_column}), ap, compound_column)
    parameters = {
        "pos_sameby": [compound_column], "pos_diffby": [], "neg_sameby": [plate_column],
        "neg_diffby": [pert_type_column, compound_column], "controls": query, "treatments": list(treatments),
        "replicates": [min_replicates, max_replicates], "n_compounds_excluded_by_replicates": excluded,
        "null_size": null_size, "threshold": threshold, "seed": seed, "distance": distance,
        "library": f"copairs {version('copairs')}",
    }
    return MapResult(per_compound, ap, compound_column, threshold, parameters)


def _chunked_average_precision(meta, values, scored, is_control, chunk_size, distance, show_progress):
    """copairs AP of every scored well, computed over chunks of whole plates; rows indexed by position.

    A chunk holds its plates' scored wells (the queries) and controls, plus the other wells of the queries'
    compounds (their positives on other plates). A query's negatives are its own plate's controls, all inside
    the chunk, so its AP is the one a single call over all wells gives; the AP of the extra wells is dropped.
    """
    from copairs.map import average_precision

    logging.getLogger("copairs").setLevel(logging.WARNING)
    # integer codes: selecting a chunk's rows is then a lookup per row, not a string search over all wells
    plate_codes, plate_names = pd.factorize(meta[_PLATE])
    group_codes = pd.factorize(meta[_GROUP])[0]
    parts = []
    for chunk in tqdm(_plate_chunks(meta[_PLATE].to_numpy(), scored, chunk_size), desc="phenotypic activity",
                      disable=not show_progress):
        in_chunk = np.zeros(len(plate_names), dtype=bool)
        in_chunk[plate_names.get_indexer(chunk)] = True
        on_plates = in_chunk[plate_codes]
        queries = scored & on_plates
        query_groups = np.zeros(group_codes.max() + 1, dtype=bool)
        query_groups[group_codes[queries]] = True
        rows = np.flatnonzero(queries | (is_control & on_plates) | (scored & query_groups[group_codes]))
        ap = average_precision(meta.iloc[rows], values[rows], pos_sameby=[_GROUP], pos_diffby=[],
                               neg_sameby=[_PLATE], neg_diffby=[_ROLE, _GROUP], progress_bar=False,
                               distance=distance)
        parts.append(ap.set_index(rows)[queries[rows]])
    return pd.concat(parts).sort_index()


def _scored_wells(profiles, is_control, compound_column, treatments, pert_type_column, lo, hi):
    """(N,) bool of the treated wells whose compound has ``lo..hi`` treated wells, and how many compounds fell out."""
    treated = ~is_control & profiles[compound_column].notna().to_numpy()
    if pert_type_column in profiles.columns:
        treated &= profiles[pert_type_column].isin(list(treatments)).to_numpy()
    compounds = profiles[compound_column].astype(str)
    counts = compounds[treated].value_counts()
    valid = counts[(counts >= lo) & (counts <= hi)].index
    scored = treated & compounds.isin(valid).to_numpy()
    if not scored.any():
        raise ValueError(f"no compound has between {lo} and {hi} treated wells ({int(treated.sum())} treated wells, "
                         f"{len(counts)} compounds); phenotypic activity needs replicates")
    return scored, int(len(counts) - len(valid))


def _plate_chunks(plates: np.ndarray, scored: np.ndarray, chunk_size: int) -> list[list[str]]:
    """Whole plates, in sorted order, grouped so that each group holds about ``chunk_size`` query wells."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    counts = pd.Series(plates[scored]).value_counts().sort_index()
    chunks, current, filled = [], [], 0
    for plate, n in counts.items():
        current.append(plate)
        filled += int(n)
        if filled >= chunk_size:
            chunks.append(current)
            current, filled = [], 0
    return chunks + ([current] if current else [])
