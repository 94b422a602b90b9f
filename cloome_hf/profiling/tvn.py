"""Typical variation normalisation (TVN) and CORAL, with scikit-learn and scipy.

TVN (Ando et al. 2017, "Improving phenotypic measurements in high-content imaging screens") whitens profiles
against the variation of the negative controls, so that directions in which controls vary a lot (nuisance)
count less than directions in which they are tight:

1. centre and scale every feature with the controls' mean and standard deviation;
2. fit PCA on the (scaled) controls and project every profile on its components;
3. centre and scale every component with the controls' mean and standard deviation again.

CORAL (Sun et al. 2016, "Return of frustratingly easy domain adaptation") then aligns, per batch, the second
moments of that batch's controls with those of all controls: ``X_b <- X_b (C_b + l I)^{-1/2} (C + l I)^{1/2}``,
with ``C_b`` / ``C`` the control covariances and ``l`` the regularisation (``1``, as in the CORAL paper).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

__all__ = ["coral", "typical_variation_normalization"]


def typical_variation_normalization(
    values: np.ndarray,
    controls: np.ndarray,
    batches: np.ndarray | None = None,
    coral_regularization: float = 1.0,
) -> np.ndarray:
    """TVN of ``values`` fitted on the ``controls`` rows, then per-batch CORAL if ``batches`` is given.

    Args:
        values: ``(N, D)`` profiles.
        controls: ``(N,)`` bool, the negative-control rows (at least 3).
        batches: optional ``(N,)`` batch labels for CORAL.

    Returns:
        ``(N, K)`` float64 with ``K = min(D, n_controls - 1)`` principal components (the last component of
        ``n`` centred controls has no variance and is not kept).
    """
    values = np.asarray(values, dtype=np.float64)
    controls = np.asarray(controls, dtype=bool)
    if values.ndim != 2 or controls.shape != (values.shape[0],):
        raise ValueError(f"values {values.shape} and controls {controls.shape} must describe the same rows")
    n_controls = int(controls.sum())
    if n_controls < 3:
        raise ValueError(f"TVN needs at least 3 control profiles, got {n_controls}")
    scaled = StandardScaler().fit(values[controls]).transform(values)
    pca = PCA(n_components=min(values.shape[1], n_controls - 1), svd_solver="full").fit(scaled[controls])
    projected = pca.transform(scaled)
    out = StandardScaler().fit(projected[controls]).transform(projected)
    if batches is not None:
        out = coral(out, controls, batches, coral_regularization)
    return out


def coral(values: np.ndarray, controls: np.ndarray, batches: np.ndarray, regularization: float = 1.0) -> np.ndarray:
    """Per batch ``b``: ``values_b @ (C_b + l I)^{-1/2} @ (C + l I)^{1/2}`` with control covariances ``C_b``, ``C``.

    Args:
        values: ``(N, D)``; controls: ``(N,)`` bool; batches: ``(N,)`` labels, each batch with >= 2 controls.
    """
    batches = np.asarray(batches)
    if regularization <= 0:
        raise ValueError(f"CORAL regularization must be > 0, got {regularization}")
    eye = regularization * np.eye(values.shape[1])
    target = _matrix_power(np.cov(values[controls], rowvar=False) + eye, 0.5)
    out = np.empty_like(values)
    for batch in np.unique(batches):
        rows = batches == batch
        batch_controls = rows & controls
        if batch_controls.sum() < 2:
            raise ValueError(f"CORAL needs >= 2 controls in every batch; batch {batch!r} has {batch_controls.sum()}")
        source = _matrix_power(np.cov(values[batch_controls], rowvar=False) + eye, -0.5)
        out[rows] = values[rows] @ source @ target
    return out


def _matrix_power(matrix: np.ndarray, power: float) -> np.ndarray:
    """``matrix ** power`` of a symmetric positive-definite matrix through its eigendecomposition."""
    w, v = linalg.eigh(np.atleast_2d(matrix))
    return (v * w ** power) @ v.T
