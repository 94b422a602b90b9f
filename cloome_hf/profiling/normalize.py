"""Named normalisation steps, fitted on negative controls, chained into a pipeline.

=================  =========================================================================  ==============
step               what                                                                       library
=================  =========================================================================  ==============
``standardize``    per plate: ``(x - mean) / std`` of the plate's controls                     pycytominer
``robustize``      per plate: ``(x - median) / IQR`` of the plate's controls                   pycytominer
``mad_robustize``  per plate: ``(x - median) / (1.4826 MAD)`` of the plate's controls          pycytominer
``feature_select`` drop near-constant, NaN-heavy and highly correlated (> 0.9) features       pycytominer
``sphering``       ZCA-cor whitening fitted on all controls                                    pycytominer
``tvn``            typical variation normalisation (:mod:`.tvn`)                              scikit-learn
``tvn_coral``      TVN, then per-batch CORAL on the controls (:mod:`.tvn`)                    scikit-learn
``harmony``        Harmony integration over ``batch_column`` (batch or source)                 harmonypy
=================  =========================================================================  ==============

Feature lists are always passed to pycytominer explicitly: embedding dimensions are not CellProfiler names.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .table import control_mask, controls_query, feature_columns, metadata_columns, record_step, require_columns

__all__ = ["NORMALIZATION_STEPS", "NormalizeOptions", "normalize", "parse_pipeline"]

PER_PLATE_METHODS = ("standardize", "robustize", "mad_robustize")


@dataclass(frozen=True)
class NormalizeOptions:
    """Settings shared by the steps; recorded with each step in ``attrs["profiling"]["pipeline"]``.

    ``controls``: pandas query of the negative controls (see :func:`~.table.controls_query`).
    ``plate_column``: per-plate scaling unit; ``None`` fits the scalers on all plates' controls at once.
    ``batch_column``: unit of ``tvn`` (second centring, CORAL) and ``harmony``; ``"Metadata_Source"`` for sources.
    """

    controls: str
    plate_column: str | None = "Metadata_Plate"
    batch_column: str = "Metadata_Batch"
    seed: int = 0
    coral_regularization: float = 1.0
    harmony_kwargs: dict = field(default_factory=dict)


def _scale_per_plate(profiles: pd.DataFrame, options: NormalizeOptions, method: str) -> tuple[pd.DataFrame, dict]:
    """``pycytominer.normalize(method=method)`` on each plate, fitted on that plate's controls."""
    from pycytominer import normalize as pycytominer_normalize

    feats, meta = feature_columns(profiles), metadata_columns(profiles)
    plates = [(None, profiles)] if options.plate_column is None else _plates(profiles, options)
    parts = []
    for plate, part in plates:
        control_mask(part, options.controls, where="profiles" if plate is None else f"plate {plate!r}")
        parts.append(pycytominer_normalize(part, features=feats, meta_features=meta, samples=options.controls,
                                           method=method, output_file=None))
    out = pd.concat(parts).loc[profiles.index, list(profiles.columns)]
    return out, {"fit_on": options.controls, "per": options.plate_column or "all plates",
                 "library": f"pycytominer {version('pycytominer')}"}


def _plates(profiles: pd.DataFrame, options: NormalizeOptions):
    require_columns(profiles, [options.plate_column], "per-plate normalisation")
    return list(profiles.groupby(options.plate_column, sort=False))


def _sphering(profiles: pd.DataFrame, options: NormalizeOptions) -> tuple[pd.DataFrame, dict]:
    """ZCA-cor sphering fitted on all controls (pycytominer's ``spherize``)."""
    from pycytominer import normalize as pycytominer_normalize

    control_mask(profiles, options.controls)
    out = pycytominer_normalize(profiles, features=feature_columns(profiles), meta_features=metadata_columns(profiles),
                                samples=options.controls, method="spherize", spherize_method="ZCA-cor",
                                spherize_center=True, output_file=None)
    return out[list(profiles.columns)], {"fit_on": options.controls, "method": "ZCA-cor",
                                         "library": f"pycytominer {version('pycytominer')}"}


FEATURE_SELECT_OPERATIONS = ("variance_threshold", "correlation_threshold", "drop_na_columns")


def _feature_select(profiles: pd.DataFrame, options: NormalizeOptions) -> tuple[pd.DataFrame, dict]:
    """pycytominer's ``feature_select`` with the operations that apply to any features (no CellProfiler
    blocklist): near-zero variance, correlation above 0.9, more than 5 % missing."""
    from pycytominer import feature_select

    feats = feature_columns(profiles)
    out = feature_select(profiles, features=feats, operation=list(FEATURE_SELECT_OPERATIONS), output_file=None)
    kept = [c for c in profiles.columns if c in set(out.columns)]
    if not set(kept) - set(metadata_columns(profiles)):
        raise ValueError("feature_select dropped every feature")
    return out[kept], {"operations": list(FEATURE_SELECT_OPERATIONS), "n_features_in": len(feats),
                       "n_features_out": len(kept) - len(metadata_columns(profiles)),
                       "library": f"pycytominer {version('pycytominer')}"}


def _tvn(profiles: pd.DataFrame, options: NormalizeOptions, coral: bool) -> tuple[pd.DataFrame, dict]:
    """TVN fitted on the controls (:mod:`.tvn`), with per-batch CORAL when ``coral``; the features become the
    principal components ``PC1 ... PCK`` of the controls."""
    from .tvn import typical_variation_normalization

    feats = feature_columns(profiles)
    mask = control_mask(profiles, options.controls)
    batches = _batches(profiles, options) if coral else None
    values = typical_variation_normalization(profiles[feats].to_numpy(np.float64), mask, batches=batches,
                                             coral_regularization=options.coral_regularization)
    info = {"fit_on": options.controls, "library": f"scikit-learn {version('scikit-learn')}"}
    if coral:
        info.update(coral_per=options.batch_column, coral_regularization=options.coral_regularization)
    components = pd.DataFrame(values, index=profiles.index, columns=[f"PC{i + 1}" for i in range(values.shape[1])])
    return pd.concat([profiles[metadata_columns(profiles)], components], axis=1), info


def _harmony(profiles: pd.DataFrame, options: NormalizeOptions) -> tuple[pd.DataFrame, dict]:
    from .harmony import harmony

    feats = feature_columns(profiles)
    values = harmony(profiles[feats].to_numpy(np.float64), _batches(profiles, options), seed=options.seed,
                     **options.harmony_kwargs)
    return _with_features(profiles, feats, values), {
        "by": options.batch_column, "seed": options.seed, "kwargs": dict(options.harmony_kwargs),
        "library": f"harmonypy {version('harmonypy')}"}


def _batches(profiles: pd.DataFrame, options: NormalizeOptions) -> np.ndarray:
    require_columns(profiles, [options.batch_column], "batch correction")
    batches = profiles[options.batch_column]
    if batches.isna().any():
        raise ValueError(f"{options.batch_column} is missing on row {batches.index[batches.isna()][0]}")
    return batches.astype(str).to_numpy()


def _with_features(profiles: pd.DataFrame, feats: list[str], values: np.ndarray) -> pd.DataFrame:
    out = profiles.copy()
    out[feats] = values
    return out


NORMALIZATION_STEPS: dict[str, Callable] = {
    **{m: partial(_scale_per_plate, method=m) for m in PER_PLATE_METHODS},
    "feature_select": _feature_select,
    "sphering": _sphering,
    "tvn": partial(_tvn, coral=False),
    "tvn_coral": partial(_tvn, coral=True),
    "harmony": _harmony,
}


def parse_pipeline(pipeline: str | Sequence[str] | None) -> list[str]:
    """``"mad_robustize,sphering"`` or ``["mad_robustize", "sphering"]`` -> checked list of step names;
    ``None`` / ``""`` / ``"none"`` -> ``[]`` (raw profiles)."""
    if pipeline is None:
        return []
    names = pipeline.split(",") if isinstance(pipeline, str) else list(pipeline)
    steps = [str(s).strip() for s in names if str(s).strip() and str(s).strip().lower() != "none"]
    unknown = [s for s in steps if s not in NORMALIZATION_STEPS]
    if unknown:
        raise ValueError(f"unknown normalisation step {unknown[0]!r}; choose from {', '.join(NORMALIZATION_STEPS)}")
    return steps


def normalize(
    profiles: pd.DataFrame,
    method: str | Sequence[str] = "mad_robustize",
    *,
    controls: str | None = None,
    plate_column: str | None = "Metadata_Plate",
    batch_column: str = "Metadata_Batch",
    seed: int = 0,
    coral_regularization: float = 1.0,
    harmony_kwargs: dict | None = None,
) -> pd.DataFrame:
    """Run the normalisation ``method`` (one step name or a pipeline of them, see the module table).

    Args:
        profiles: a profiles table (``Metadata_*`` + numeric features), e.g. from :func:`~.aggregate.aggregate`.
        method: ``"mad_robustize"``, ``"mad_robustize,sphering"``, ``["mad_robustize", "sphering"]``, ...
        controls: query of the negative controls the steps are fitted on (default
            ``Metadata_pert_type == 'negcon'``; a bare ``"negcon"`` means the same).

    Returns:
        A new table with the same rows, metadata and (for ``feature_select``, fewer) feature columns; each step
        is appended, with its settings and library version, to ``attrs["profiling"]["pipeline"]``.
    """
    steps = parse_pipeline(method)
    options = NormalizeOptions(controls_query(controls), plate_column, batch_column, seed, coral_regularization,
                               dict(harmony_kwargs or {}))
    feature_columns(profiles)
    out = profiles.copy()
    out.attrs["profiling"] = {"pipeline": [], **copy.deepcopy(profiles.attrs.get("profiling", {}))}
    for name in steps:
        result, info = NORMALIZATION_STEPS[name](out, options)
        out = record_step(result, out, "pipeline", {"step": name, **info})
    return out
