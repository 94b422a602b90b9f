"""`evaluate` module: JUMP phenotypic consistency (copairs multi-label mAP of compounds sharing an annotation).

Load offline with ``evaluate.load(cloome_hf.evaluation.metric_path("cloome_jump_consistency"))``. Each input row is
one well profile; the rows are normalised with ``pipeline`` (fitted on the negative controls), averaged into one
consensus profile per compound and scored by :func:`cloome_hf.evaluation.jump.consistency_task`.
"""

import datasets
import evaluate
import numpy as np
import pandas as pd

from cloome_hf.evaluation.jump import DEFAULT_PIPELINE, consistency_task
from cloome_hf.evaluation.report import flatten_results
from cloome_hf.profiling import normalize

_DESCRIPTION = """JUMP phenotypic consistency: per annotation label (target or MoA), the mAP of retrieving the other
compounds with that label among compounds sharing no label with the query, on median consensus profiles (copairs
multilabel mode), with Benjamini-Hochberg corrected permutation p-values; reports mean mAP and the fraction of
labels retrieved."""

_KWARGS_DESCRIPTION = """
Args:
    profiles: N well profiles (lists of floats).
    compounds: N compound ids.
    labels: N annotation strings ("|"-separated for several labels; "" for none), constant per compound.
    plates: N plate ids.
    perturbation_types: N of "trt", "negcon", "poscon", "unknown"; "negcon" rows are the controls.
    pipeline: normalisation steps fitted on the controls (default "mad_robustize,sphering"; "" for raw).
    null_size, threshold, seed: permutation null size (10000), significance level (0.05), seed (0).
Returns:
    flat dict: n_labels, n_compounds, mean_map, fraction_retrieved, fraction_retrieved_ci_low, ...
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CloomeJumpConsistency(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "profiles": datasets.Sequence(datasets.Value("float32")),
                "compounds": datasets.Value("string"),
                "labels": datasets.Value("string"),
                "plates": datasets.Value("string"),
                "perturbation_types": datasets.Value("string"),
            }),
        )

    def _compute(self, profiles, compounds, labels, plates, perturbation_types, pipeline=DEFAULT_PIPELINE,
                 null_size=10000, threshold=0.05, seed=0):
        values = np.asarray(profiles, dtype=np.float64)
        meta = pd.DataFrame({"Metadata_Plate": plates, "Metadata_InChIKey": compounds,
                             "Metadata_pert_type": perturbation_types,
                             "Metadata_label": [label or None for label in labels]})
        feats = pd.DataFrame(values, columns=[f"emb_{i:04d}" for i in range(values.shape[1])])
        table = normalize(pd.concat([meta, feats], axis=1), pipeline)
        result = consistency_task(table, None, by="label", null_size=null_size, threshold=threshold, seed=seed)
        return flatten_results(result)
