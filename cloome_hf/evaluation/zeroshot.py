"""Zero-shot image-to-image classification (CLOOME paper, Tables 3 and 4).

Protocol: for every class (a molecule, or a mechanism of action) one prototype image is drawn at random
(seeded). Every other site is a query, except sites that share **both** molecule and plate with any prototype:
those would let the classifier match plate-level artefacts of the very same treatment instead of phenotype,
so they are removed. Each query is assigned the classes of the most cosine-similar prototypes (a softmax over
prototype similarities has the same order); top-k accuracy counts the true class within the first ``k``, with
ties broken pessimistically (a prototype scoring exactly as high as the true class ranks above it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .retrieval import as_normalized_tensor
from .stats import proportion_with_ci, random_topk_accuracy

__all__ = ["select_prototypes", "zeroshot_query_mask", "zeroshot_classification"]


def _missing(values) -> np.ndarray:
    s = pd.Series(list(values), dtype=object)
    return (s.isna() | (s.astype(str).str.strip() == "")).to_numpy()


def select_prototypes(labels, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One seeded random site index per class.

    Returns:
        ``(classes, prototype_indices)``: sorted unique labels ``(C,)`` and the chosen row of each ``(C,)``.
    """
    labels = np.asarray(labels, dtype=object)
    classes, inverse = np.unique(labels.astype(str), return_inverse=True)
    rng = np.random.default_rng(seed)
    # Shuffle once, then take each class's first occurrence: one uniform draw per class, reproducible.
    perm = rng.permutation(len(labels))
    first = {}
    for i in perm:
        first.setdefault(int(inverse[i]), int(i))
    return classes, np.array([first[c] for c in range(len(classes))], dtype=np.int64)


def zeroshot_query_mask(molecules, plates, prototype_indices) -> np.ndarray:
    """``(N,)`` bool: True for sites kept as queries.

    Removed: the prototypes themselves and every site whose ``(molecule, plate)`` equals that of a prototype.
    """
    molecules = np.asarray(molecules, dtype=object).astype(str)
    plates = np.asarray(plates, dtype=object).astype(str)
    if molecules.shape != plates.shape:
        raise ValueError(f"molecules has {molecules.shape[0]} entries but plates has {plates.shape[0]}")
    protos = np.asarray(prototype_indices, dtype=np.int64)
    keys = pd.MultiIndex.from_arrays([molecules, plates])
    # A prototype shares its own (molecule, plate), so the prototypes are removed by the same rule.
    return ~keys.isin(keys[protos])


def zeroshot_classification(
    embeds,
    labels,
    molecules,
    plates,
    *,
    ks=(1, 5, 10),
    seed: int = 0,
    confidence: float = 0.95,
    device=None,
    chunk_size: int = 4096,
) -> dict:
    """Zero-shot classification of image embeddings by nearest class prototype.

    Args:
        embeds: ``(N, D)`` image embeddings.
        labels: ``(N,)`` class of each site (molecule id for Table 3, MoA for Table 4); sites with a missing
            label (None, NaN, empty) take no part.
        molecules: ``(N,)`` molecule id of each site (for the removal rule).
        plates: ``(N,)`` plate id of each site.
        ks: top-k cut-offs.
        seed: seed of the prototype draw.

    Returns:
        dict with ``n_classes``, ``n_queries``, ``n_removed`` (sites dropped by the molecule-and-plate rule),
        ``top{k}`` as ``{"value", "ci_low", "ci_high", "k", "n"}``, ``mean_rank`` and the ``random`` baseline
        ``k / n_classes``.
    """
    labels = np.asarray(labels, dtype=object)
    n = len(labels)
    if not (len(molecules) == len(plates) == n == len(embeds)):
        raise ValueError(
            f"embeds ({len(embeds)}), labels ({n}), molecules ({len(molecules)}) and plates ({len(plates)}) "
            "must have one entry per site"
        )
    present = np.flatnonzero(~_missing(labels))
    if present.size == 0:
        raise ValueError("zero-shot classification needs at least one labelled site; all labels are missing")
    x = as_normalized_tensor(embeds, "embeds", device)[torch.as_tensor(present, device=device)]
    labels = labels[present].astype(str)
    molecules = np.asarray(molecules, dtype=object)[present]
    plates = np.asarray(plates, dtype=object)[present]

    classes, protos = select_prototypes(labels, seed)
    keep = zeroshot_query_mask(molecules, plates, protos)
    queries = np.flatnonzero(keep)
    n_removed = int(len(labels) - len(classes) - len(queries))
    if queries.size == 0:
        raise ValueError(
            "no query sites remain after removing prototypes and sites sharing molecule and plate with them"
        )
    true_class = torch.as_tensor(np.searchsorted(classes, labels[queries]), device=x.device)
    proto_x = x[torch.as_tensor(protos, device=x.device)]
    ranks = []
    q_index = torch.as_tensor(queries, device=x.device)
    for start in range(0, len(queries), chunk_size):
        rows = q_index[start : start + chunk_size]
        scores = x[rows] @ proto_x.T  # (chunk, C)
        true = scores.gather(1, true_class[start : start + chunk_size, None])
        ranks.append((scores >= true).sum(1).cpu())
    ranks = torch.cat(ranks).numpy()

    out: dict = {
        "n_classes": int(len(classes)),
        "n_queries": int(len(queries)),
        "n_removed": n_removed,
        "seed": seed,
    }
    random = {}
    for k in ks:
        out[f"top{k}"] = proportion_with_ci(int((ranks <= k).sum()), len(ranks), confidence)
        random[f"top{k}"] = random_topk_accuracy(k, len(classes))
    out["mean_rank"] = float(ranks.mean())
    out["random"] = random
    return out
