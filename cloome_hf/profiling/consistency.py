"""Phenotypic consistency: do compounds that share a target (or MoA) have similar consensus profiles?

As in the JUMP papers (Chandrasekaran et al. 2024, copairs' multilabel mode): one consensus profile per compound
(the median of its treated wells), labels from an annotation table (``"|"``-separated lists: a compound with
several targets belongs to each), and per label the mAP of retrieving the label's other compounds among all
compounds that share no label with the query; permutation p-values (null 10,000, seed 0), Benjamini-Hochberg
correction, "retrieved" = corrected p < 0.05.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import Iterable, Sequence

import pandas as pd

from .aggregate import aggregate
from .results import MapResult, summarize_map
from .table import (
    METADATA_NAMES,
    PERT_TYPE_COLUMN,
    check_finite,
    control_mask,
    controls_query,
    feature_columns,
    metadata_column,
    require_columns,
)

__all__ = ["annotation_column", "phenotypic_consistency"]


def annotation_column(annotations: pd.DataFrame, by: str) -> str:
    """The column of ``annotations`` that ``by`` names: ``by`` itself, else ``Metadata_{by}``."""
    for name in (by, metadata_column(by), f"Metadata_{by}"):
        if name in annotations.columns:
            return name
    raise ValueError(f"annotation table has no column {by!r} (nor Metadata_{by}); columns: {list(annotations.columns)}")


def phenotypic_consistency(
    profiles: pd.DataFrame,
    annotations: pd.DataFrame,
    by: str = "target",
    *,
    compound_column: str = "Metadata_InChIKey",
    controls: str | None = None,
    treatments: Sequence[str] = ("trt",),
    pert_type_column: str = PERT_TYPE_COLUMN,
    key_column: str | None = None,
    compounds: Iterable[str] | None = None,
    separator: str = "|",
    method: str = "median",
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    distance: str = "cosine",
    show_progress: bool = False,
) -> MapResult:
    """Per-label mAP of retrieving compounds that share a ``by`` annotation.

    Args:
        profiles: well profiles; controls (default ``Metadata_pert_type == 'negcon'``) and wells whose
            ``pert_type_column`` is not in ``treatments`` are left out before the consensus.
        annotations: one row per compound: ``compound_column`` (the same ids as in ``profiles``) and the ``by``
            column (``"target"`` / ``"moa"``, or their ``Metadata_`` names), ``separator``-joined label lists.
            Compounds without a label are left out.
        key_column: the annotation column with the compound ids; default ``compound_column``, else its
            embeddings-dataset name (``inchikey`` for ``Metadata_InChIKey``).
        compounds: optional ids to keep (e.g. the compounds retrieved by phenotypic activity, as in the JUMP
            papers).
        method: consensus aggregation, ``"median"`` or ``"mean"``.

    Returns:
        :class:`~.results.MapResult` with one row per label in ``per_group`` (group column: the annotation
        column) and one per (compound, label) in ``average_precision``.
    """
    from copairs.map import mean_average_precision, multilabel

    require_columns(profiles, [compound_column], "phenotypic consistency")
    label_column = annotation_column(annotations, by)
    annotations = annotations.rename(columns={_key_column(annotations, compound_column, key_column): compound_column})
    keep = ~control_mask(profiles, controls) & profiles[compound_column].notna().to_numpy()
    if pert_type_column in profiles.columns:
        keep &= profiles[pert_type_column].isin(list(treatments)).to_numpy()
    if compounds is not None:
        keep &= profiles[compound_column].astype(str).isin([str(c) for c in compounds]).to_numpy()
    if not keep.any():
        raise ValueError("no treated well is left for phenotypic consistency")
    consensus = aggregate(profiles.loc[keep], by=[compound_column], method=method)
    labels = _label_lists(annotations, compound_column, label_column, separator)
    label_column = labels.columns[1]  # the Metadata_ spelling, so it is not taken for a feature
    consensus = consensus.drop(columns=[label_column], errors="ignore")
    consensus = consensus.assign(**{compound_column: consensus[compound_column].astype(str)})
    consensus = consensus.merge(labels, on=compound_column, how="inner")
    if consensus.empty:
        raise ValueError(f"no compound of the profiles has a {label_column!r} annotation "
                         f"(joined on {compound_column})")
    feats = feature_columns(consensus.drop(columns=[label_column]))
    check_finite(consensus, feats, "phenotypic consistency")
    values = consensus[feats].to_numpy()
    meta = consensus[[compound_column, label_column]].reset_index(drop=True)
    logging.getLogger("copairs").setLevel(logging.WARNING)
    ap = multilabel.average_precision(meta, values, pos_sameby=[label_column], pos_diffby=[], neg_sameby=[],
                                      neg_diffby=[label_column], multilabel_col=label_column, progress_bar=False,
                                      distance=distance)
    ap = ap[ap["n_pos_pairs"] > 0].reset_index(drop=True)
    if ap.empty:
        raise ValueError(f"no {label_column!r} label is shared by two or more compounds")
    maps = mean_average_precision(ap, [label_column], null_size=null_size, threshold=threshold, seed=seed,
                                  progress_bar=show_progress)
    parameters = {
        "consensus": {"by": compound_column, "method": method}, "controls": controls_query(controls),
        "labels": label_column, "multilabel": True,
        "separator": separator, "pos_sameby": [label_column], "pos_diffby": [], "neg_sameby": [],
        "neg_diffby": [label_column], "n_compounds": int(len(consensus)), "null_size": null_size,
        "threshold": threshold, "seed": seed, "distance": distance, "library": f"copairs {version('copairs')}",
    }
    return MapResult(summarize_map(maps, ap, label_column), ap, label_column, threshold, parameters)


def _key_column(annotations: pd.DataFrame, compound_column: str, key_column: str | None) -> str:
    plain = {v: k for k, v in METADATA_NAMES.items()}.get(compound_column)
    for name in ([key_column] if key_column else [compound_column, plain]):
        if name and name in annotations.columns:
            return name
    raise ValueError(f"annotation table has no compound column {key_column or compound_column!r}; columns: "
                     f"{list(annotations.columns)}")


def _label_lists(annotations: pd.DataFrame, compound_column: str, label_column: str, separator: str) -> pd.DataFrame:
    """One row per annotated compound: its id (str) and the sorted list of its distinct labels, in a column
    named ``Metadata_{label}`` (``label_column`` itself if it already has the prefix)."""
    ann = annotations[[compound_column, label_column]].dropna()
    ann = ann.assign(**{compound_column: ann[compound_column].astype(str)})
    split = ann[label_column].astype(str).str.split(separator, regex=False)
    ann = ann.assign(**{label_column: split}).explode(label_column)
    ann[label_column] = ann[label_column].str.strip()
    ann = ann[ann[label_column] != ""]
    lists = ann.groupby(compound_column)[label_column].agg(lambda s: sorted(set(s)))
    return lists.rename(metadata_column(label_column)).reset_index()
