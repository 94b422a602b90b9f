"""Harmony integration (Korsunsky et al. 2019) with harmonypy.

Harmony ranks in the top three batch-correction methods in every scenario of Arevalo et al. 2024 (Nat. Commun.
15:6516) for Cell Painting profiles; the JUMP profiles are corrected with it after sphering.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

__all__ = ["harmony"]


def harmony(values: np.ndarray, batches: np.ndarray, seed: int = 0, **kwargs) -> np.ndarray:
    """``harmonypy.run_harmony`` over ``batches``; returns the corrected ``(N, D)`` matrix (``Z_corr``).

    Args:
        values: ``(N, D)`` profiles; batches: ``(N,)`` labels (plate batch or source), at least two distinct.
        seed: harmonypy's ``random_state``; kwargs: other ``run_harmony`` arguments (``theta``, ``nclust``, ...).
    """
    import harmonypy

    values = np.asarray(values, dtype=np.float64)
    batches = np.asarray(batches).astype(str)
    if batches.shape != (values.shape[0],):
        raise ValueError(f"batches has {batches.shape[0]} labels for {values.shape[0]} profiles")
    if len(np.unique(batches)) < 2:
        raise ValueError(f"Harmony needs at least two batches; all profiles are in {batches[0]!r}")
    logging.getLogger("harmonypy").setLevel(logging.WARNING)
    result = harmonypy.run_harmony(values, pd.DataFrame({"batch": batches}), "batch", random_state=seed,
                                   verbose=False, **kwargs)
    corrected = np.asarray(result.Z_corr)  # (N, D) since harmonypy 2
    if corrected.shape != values.shape:
        raise RuntimeError(f"harmonypy returned shape {corrected.shape} for input {values.shape}")
    return corrected
