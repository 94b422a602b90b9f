"""Replicate / phenotypic-activity mean average precision with ``copairs`` (JUMP consortium metric).

For each site, sites of the same molecule are positives and sites of other molecules (or, for phenotypic
activity, only negative-control sites) are negatives; the average precision of the cosine ranking is averaged
per molecule (mAP), and a permutation null from ``copairs`` gives each molecule a p-value (Benjamini–Hochberg
corrected). The headline number is the fraction of molecules "retrieved" (corrected p < ``threshold``), with a
Clopper–Pearson interval.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from copairs.map import average_precision, mean_average_precision

from .stats import proportion_with_ci

__all__ = ["replicate_map"]


def replicate_map(
    embeds,
    molecules,
    *,
    null_size: int = 10000,
    threshold: float = 0.05,
    seed: int = 0,
    confidence: float = 0.95,
    show_progress: bool = False,
) -> dict:
    """mAP of replicate retrieval per molecule.

    Args:
        embeds: ``(N, D)`` site or well embeddings.
        molecules: ``(N,)`` molecule id of each row.

    Negatives are all other molecules (*replicate retrieval*). Phenotypic activity against negative controls, with
    the JUMP recipe's same-plate rule, is :func:`cloome_hf.profiling.phenotypic_activity`.
        null_size: size of the permutation null per (positives, total) configuration.
        threshold: significance level on the BH-corrected p-values.

    Returns:
        dict with ``mode``, ``n_molecules`` (with at least two replicates), ``mean_map``, ``fraction_retrieved``
        (``{"value", "ci_low", "ci_high", "k", "n"}``) and ``per_molecule`` rows ``{molecule, map, p_value,
        corrected_p_value}``.
    """
    feats = np.asarray(embeds, dtype=np.float32)
    molecules = np.asarray(molecules, dtype=object).astype(str)
    if feats.ndim != 2 or feats.shape[0] != molecules.shape[0]:
        raise ValueError(f"embeds {feats.shape} and molecules ({molecules.shape[0]}) must have one row per sample")
    meta = pd.DataFrame({"molecule": molecules})
    logging.getLogger("copairs").setLevel(logging.WARNING)
    ap = average_precision(meta, feats, ["molecule"], [], [], ["molecule"], progress_bar=show_progress)
    ap = ap.dropna(subset=["average_precision"])
    ap = ap[ap["n_pos_pairs"] > 0]
    if ap.empty:
        raise ValueError("no molecule has two or more replicates; mAP needs replicates")
    maps = mean_average_precision(
        ap, ["molecule"], null_size=null_size, threshold=threshold, seed=seed, progress_bar=show_progress
    )
    retrieved = int(maps["below_corrected_p"].sum())
    per_molecule = [
        {
            "molecule": str(r.molecule),
            "map": float(r.mean_average_precision),
            "p_value": float(r.p_value),
            "corrected_p_value": float(r.corrected_p_value),
        }
        for r in maps.itertuples()
    ]
    return {
        "mode": "replicate_retrieval",
        "n_molecules": int(len(maps)),
        "mean_map": float(maps["mean_average_precision"].mean()),
        "fraction_retrieved": proportion_with_ci(retrieved, len(maps), confidence),
        "threshold": threshold,
        "null_size": null_size,
        "per_molecule": per_molecule,
    }
