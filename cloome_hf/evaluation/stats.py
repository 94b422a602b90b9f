"""Exact binomial confidence intervals and random-baseline helpers.

Every proportion the evaluation suite reports (top-k accuracy, recall, fraction of retrieved groups) comes
with an exact Clopper–Pearson interval, the kind of interval quoted in the CLOOME paper's tables.
"""

from __future__ import annotations

import math

from scipy import stats

__all__ = ["clopper_pearson", "proportion_with_ci", "random_topk_accuracy", "top_percent_k"]


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
