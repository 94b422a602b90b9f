"""Image-based profiling the JUMP consortium's way: well profiles, batch correction, mAP of activity and
consistency.

    >>> from cloome_hf.profiling import aggregate, normalize, phenotypic_activity, phenotypic_consistency
    >>> wells = aggregate("runs/embeddings", by=("plate", "well"))          # embeddings dataset -> wells
    >>> wells = normalize(wells, "mad_robustize,sphering")                  # fitted on the DMSO wells
    >>> activity = phenotypic_activity(wells)                               # per compound vs. its plates' DMSO
    >>> activity.fraction_retrieved
    >>> consistency = phenotypic_consistency(wells, annotations, by="target",
    ...                                      compounds=activity.retrieved())

Which library does what: pycytominer aggregates, normalises per plate (standardize / robustize /
mad_robustize), selects features and spheres (ZCA-cor); scikit-learn / scipy do TVN and CORAL; harmonypy does
Harmony; copairs computes average precision, the permutation null and the corrected p-values.
"""

from .activity import phenotypic_activity
from .aggregate import aggregate
from .consistency import phenotypic_consistency
from .normalize import NORMALIZATION_STEPS, normalize, parse_pipeline
from .results import MapResult
from .table import DEFAULT_CONTROLS, PERTURBATION_TYPES, controls_query, feature_columns, site_profiles

__all__ = [
    "DEFAULT_CONTROLS", "NORMALIZATION_STEPS", "PERTURBATION_TYPES", "MapResult", "aggregate", "controls_query",
    "feature_columns", "normalize", "parse_pipeline", "phenotypic_activity", "phenotypic_consistency",
    "site_profiles",
]
