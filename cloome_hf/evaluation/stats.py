"""Exact binomial confidence intervals and random-baseline helpers.

Every proportion the evaluation suite reports (top-k accuracy, recall, fraction of retrieved groups) comes
with an exact Clopper–Pearson interval, the kind of interval quoted in the CLOOME paper's tables.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = [
    "clopper_pearson", "proportion_with_ci", "random_retrieval_baseline", "random_topk_accuracy", "top_percent_k",
]


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) two-sided interval for a binomial proportion ``k / n``.

    Args:
        k: number of successes, ``0 <= k <= n``.
        n: number of trials, ``n >= 1``.
        confidence: coverage of the interval, in ``(0, 1)``.

    Returns:
        ``(low, high)`` as fractions in ``[0, 1]``; ``low == 0`` when ``k == 0`` and ``high == 1`` when
        ``k == n`` (the beta quantiles are undefined there, the limits are not).
    """
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"clopper_pearson needs integer counts, got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n < 1:
        raise ValueError(f"clopper_pearson needs n >= 1 trials, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"clopper_pearson needs 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def proportion_with_ci(k: int, n: int, confidence: float = 0.95) -> dict:
    """``{"value": k/n, "ci_low": ..., "ci_high": ..., "k": k, "n": n}`` for one reported proportion."""
    low, high = clopper_pearson(k, n, confidence)
    return {"value": k / n, "ci_low": low, "ci_high": high, "k": int(k), "n": int(n)}


def random_topk_accuracy(k: int, n_candidates: int) -> float:
    """Expected top-``k`` accuracy of a random ranking of ``n_candidates`` with exactly one correct: ``k / N``."""
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    return min(1.0, k / n_candidates)


def top_percent_k(n_candidates: int, percent: float = 1.0) -> int:
    """Cut-off rank for "top-``percent`` % recall": ``ceil(percent/100 * N)``, at least 1."""
    return max(1, math.ceil(percent / 100.0 * n_candidates))


def random_retrieval_baseline(groups: Sequence, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Exact chance level of cross-modal retrieval of ``N`` pairs grouped by ``groups`` (e.g. molecule ids).

    The one random baseline of the package: with one pair per group it is ``k / N`` in both directions
    (:func:`random_topk_accuracy`). With replicate sites it is not: a site's own molecule's other rows are not
    competitors, and in image -> molecule retrieval the rows of a competing molecule are identical, so they
    rank together (pessimistically, as in :func:`~cloome_hf.evaluation.retrieval.retrieval_ranks`).

    * molecule -> image: the match is uniform among itself and the ``N - n_g`` images of other molecules.
    * image -> molecule: molecule ``g`` takes a uniform position among the ``M`` molecules, and the molecules
      above it are a uniform random subset of that size; a hit at ``k`` needs their rows to number at most
      ``k - 1``, counted exactly over subsets of at most ``k - 1`` molecules.

    Returns ``{"image_to_molecule_top{k}", "molecule_to_image_top{k}"}`` for each ``k``.
    """
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    if len(codes) == 0:
        raise ValueError("random_retrieval_baseline needs at least one pair")
    sizes = np.bincount(codes)
    n, num_groups = int(sizes.sum()), len(sizes)
    size_counts = Counter(int(s) for s in sizes)
    out: dict[str, float] = {}
    for k in ks:
        hit_by_size = {s: _prob_rows_above_at_most(size_counts, s, k - 1, num_groups) for s in size_counts}
        out[f"image_to_molecule_top{k}"] = sum(s * c * hit_by_size[s] for s, c in size_counts.items()) / n
        out[f"molecule_to_image_top{k}"] = sum(
            s * c * random_topk_accuracy(k, n - s + 1) for s, c in size_counts.items()) / n
    return out


def _prob_rows_above_at_most(size_counts: Counter, own_size: int, limit: int, num_groups: int) -> float:
    """P(the molecules ranked above one of size ``own_size`` hold <= ``limit`` rows), under a random order."""
    others = Counter(size_counts)
    others[own_size] -= 1
    # subsets[p][t]: number of p-subsets of the other molecules holding t <= limit rows in all
    subsets = [[0] * (limit + 1) for _ in range(limit + 1)]
    subsets[0][0] = 1
    for size, count in others.items():
        if size > limit or count == 0:
            continue
        grown = [[0] * (limit + 1) for _ in range(limit + 1)]
        for p in range(limit + 1):
            for t in range(limit + 1):
                if subsets[p][t]:
                    for j in range(min(count, (limit - t) // size, limit - p) + 1):
                        grown[p + j][t + j * size] += subsets[p][t] * math.comb(count, j)
        subsets = grown
    total = sum(sum(subsets[p]) / math.comb(num_groups - 1, p) for p in range(min(limit, num_groups - 1) + 1))
    return total / num_groups
