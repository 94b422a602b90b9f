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


#: pycytominer.normalize's settings for the steps it runs here (its defaults: ``mad_robustize_epsilon``,
#: ``spherize_epsilon``); the scalers are pycytominer's / scikit-learn's, the ones pycytominer.normalize builds.
MAD_EPSILON, SPHERIZE_EPSILON = 1e-18, 1e-6
#: Rows per block of the sphering transform: bounds its float64 temporaries (the transform is row by row).
SPHERIZE_BLOCK_ROWS = 50_000


def _scaler(method: str):
    """The scaler ``pycytominer.normalize(method=method)`` fits (same class, same settings)."""
    from pycytominer.operations import RobustMAD, Spherize
    from sklearn.preprocessing import RobustScaler, StandardScaler

    if method == "spherize":
        return Spherize(center=True, method="ZCA-cor", epsilon=SPHERIZE_EPSILON, return_numpy=True)
    return {"standardize": StandardScaler, "robustize": RobustScaler,
            "mad_robustize": lambda: RobustMAD(epsilon=MAD_EPSILON)}[method]()


#: Controls above which sphering is fitted without pycytominer's ``svd(full_matrices=True)``, whose U matrix is
#: controls x controls (50,000 controls: 20 GB of float64).
THIN_SVD_CONTROLS = 8_000


def _fit_spherize(controls: pd.DataFrame):
    """pycytominer's ``Spherize`` (ZCA-cor) fitted on ``controls``. Up to :data:`THIN_SVD_CONTROLS` rows its own
    ``fit``; above, the same steps with the thin SVD (``full_matrices=False``: the same singular values and right
    singular vectors from LAPACK for a matrix with more rows than columns; tests/profiling/test_profiling_scale.py checks
    the two agree bit for bit), so that memory grows with the controls, not with their square."""
    from sklearn.preprocessing import StandardScaler

    scaler = _scaler("spherize")
    n, d = controls.shape
    if n <= THIN_SVD_CONTROLS or n <= d:
        return scaler.fit(controls)
    values = controls.values
    scaler.standard_scaler = StandardScaler().fit(values)
    if np.any(scaler.standard_scaler.var_ == 0):
        raise ValueError("sphering: a feature is constant over the controls; drop it first (feature_select)")
    standardized = scaler.standard_scaler.transform(values)
    rank = np.linalg.matrix_rank(standardized)
    if rank != d:
        raise ValueError(f"sphering: the controls' features are linearly dependent (rank {rank} of {d})")
    _, sigma, vt = np.linalg.svd(standardized, full_matrices=False)
    sigma = sigma + scaler.epsilon
    scaler.W = ((vt / sigma[:, np.newaxis]).transpose() * np.sqrt(n - 1)) @ vt
    return scaler


def _feature_rows(profiles: pd.DataFrame, feats: list[str]):
    """``rows -> DataFrame`` of those rows' features (only they are copied; without ``attrs``, which pandas
    deep-copies on every operation)."""
    positions = profiles.columns.get_indexer(feats)

    def take(rows) -> pd.DataFrame:
        part = profiles.iloc[rows, positions]
        part.attrs = {}
        return part

    return take


def _with_feature_values(profiles: pd.DataFrame, feats: list[str], values: np.ndarray) -> pd.DataFrame:
    """``profiles``' metadata and ``values`` as its features, in ``profiles``' column order and index."""
    meta = metadata_columns(profiles)
    out = pd.concat([profiles[meta], pd.DataFrame(values, index=profiles.index, columns=feats, copy=False)],
                    axis=1)
    order = [c for c in profiles.columns if c in set(meta) | set(feats)]
    return out if list(out.columns) == order else out[order]


def _scale_per_plate(profiles: pd.DataFrame, options: NormalizeOptions, method: str) -> tuple[pd.DataFrame, dict]:
    """pycytominer's scaler of ``method`` fitted on each plate's controls and applied to that plate, as
    ``pycytominer.normalize(plate, samples=controls, method=method)`` does, plate by plate into one output array
    (the controls query is evaluated once; one plate's slice is copied at a time)."""
    feats = feature_columns(profiles)
    is_control = control_mask(profiles, options.controls)
    features = _feature_rows(profiles, feats)
    out = None
    for plate, rows in _plate_rows(profiles, options):
        if not is_control[rows].any():
            raise ValueError(f"controls query {options.controls!r} matches no row of the plate {plate!r} table")
        part = features(rows)
        scaled = np.asarray(_scaler(method).fit(part[is_control[rows]]).transform(part))
        if out is None:
            out = np.empty((len(profiles), len(feats)), dtype=scaled.dtype)
        out[rows] = scaled
    return _with_feature_values(profiles, feats, out), {
        "fit_on": options.controls, "per": options.plate_column or "all plates",
        "library": f"pycytominer {version('pycytominer')}"}


def _plate_rows(profiles: pd.DataFrame, options: NormalizeOptions) -> list[tuple[object, np.ndarray]]:
    """``(plate, row positions)`` per plate in order of first appearance (one plate of every row when
    ``plate_column`` is None); a row without a plate is refused, naming it."""
    if options.plate_column is None:
        return [(None, np.arange(len(profiles)))]
    require_columns(profiles, [options.plate_column], "per-plate normalisation")
    codes, plates = pd.factorize(profiles[options.plate_column], sort=False)
    if (codes < 0).any():
        raise ValueError(f"row {profiles.index[int(np.flatnonzero(codes < 0)[0])]!r} has no "
                         f"{options.plate_column}; per-plate normalisation needs one on every row")
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(plates) + 1))
    return [(plates[i], order[bounds[i]:bounds[i + 1]]) for i in range(len(plates))]


def _sphering(profiles: pd.DataFrame, options: NormalizeOptions) -> tuple[pd.DataFrame, dict]:
    """ZCA-cor sphering fitted on all controls: pycytominer's ``Spherize``, as ``pycytominer.normalize(
    method="spherize")`` fits it, applied in blocks of rows (the transform is row by row: same values)."""
    feats = feature_columns(profiles)
    features = _feature_rows(profiles, feats)
    scaler = _fit_spherize(features(np.flatnonzero(control_mask(profiles, options.controls))))
    out = None
    for start in range(0, len(profiles), SPHERIZE_BLOCK_ROWS):
        block = np.asarray(scaler.transform(features(slice(start, start + SPHERIZE_BLOCK_ROWS))))
        if out is None:
            out = np.empty((len(profiles), block.shape[1]), dtype=block.dtype)
        out[start:start + len(block)] = block
    return _with_feature_values(profiles, feats, out), {"fit_on": options.controls, "method": "ZCA-cor",
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
    out = profiles.copy(deep=not steps)  # each step makes a new table: no need to copy the input first
    out.attrs["profiling"] = {"pipeline": [], **copy.deepcopy(profiles.attrs.get("profiling", {}))}
    for name in steps:
        result, info = NORMALIZATION_STEPS[name](out, options)
        out = record_step(result, out, "pipeline", {"step": name, **info})
    return out
