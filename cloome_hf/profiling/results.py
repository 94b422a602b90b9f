"""The output of a copairs mAP question (phenotypic activity or consistency)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

__all__ = ["MapResult"]


@dataclass
class MapResult:
    """Per-group mAP with permutation p-values, from copairs.

    Attributes:
        per_group: one row per group (compound for activity, annotation label for consistency): the group
            column(s), ``mean_average_precision``, ``mean_normalized_average_precision``, ``p_value``,
            ``corrected_p_value`` (Benjamini-Hochberg), ``below_p``, ``below_corrected_p`` ("retrieved"),
            ``n_profiles``.
        average_precision: one row per scored profile: its metadata, ``average_precision``,
            ``normalized_average_precision``, ``n_pos_pairs``, ``n_total_pairs``.
        group_column: the column that names a group in ``per_group``.
        threshold: significance level on the corrected p-values.
        parameters: the settings (pair rules, null size, seed, filters, library version) for the record.
    """

    per_group: pd.DataFrame
    average_precision: pd.DataFrame
    group_column: str
    threshold: float
    parameters: dict = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return int(len(self.per_group))

    @property
    def n_retrieved(self) -> int:
        return int(self.per_group["below_corrected_p"].sum())

    @property
    def fraction_retrieved(self) -> float:
        """Fraction of groups with corrected p below the threshold (``nan`` without groups)."""
        return self.n_retrieved / self.n_groups if self.n_groups else float("nan")

    @property
    def mean_map(self) -> float:
        return float(self.per_group["mean_average_precision"].mean())

    def retrieved(self) -> list:
        """Names of the retrieved groups."""
        return self.per_group.loc[self.per_group["below_corrected_p"], self.group_column].tolist()


def summarize_map(maps: pd.DataFrame, ap: pd.DataFrame, group_column: str) -> pd.DataFrame:
    """``copairs.map.mean_average_precision`` output with ``n_profiles`` per group, without its index lists."""
    counts = ap[group_column].astype(str).value_counts().rename("n_profiles")
    maps = maps.drop(columns=[c for c in ("indices",) if c in maps.columns]).reset_index(drop=True)
    return maps.assign(n_profiles=maps[group_column].astype(str).map(counts).fillna(0).astype(int).to_numpy())
