"""`evaluate` module: JUMP phenotypic activity (copairs mAP of each compound against its plates' controls).

Load offline with ``evaluate.load(cloome_hf.evaluation.metric_path("cloome_jump_activity"))``. Each input row is one
well profile; the rows are normalised with ``pipeline`` (fitted on the negative controls) and scored by
:func:`cloome_hf.evaluation.jump.activity_task`; the summary is returned flattened to scalars.
"""

import datasets
import evaluate
import numpy as np
import pandas as pd

from cloome_hf.evaluation.jump import DEFAULT_PIPELINE, activity_task
from cloome_hf.evaluation.report import flatten_results
from cloome_hf.profiling import normalize

_DESCRIPTION = """JUMP phenotypic activity: per compound, the mAP of retrieving its replicate wells against the
negative-control wells of the same plate (copairs, JUMP recipe defaults), with permutation p-values corrected by
Benjamini-Hochberg; reports mean mAP and the fraction of compounds retrieved (corrected p below the threshold)."""

_KWARGS_DESCRIPTION = """
Args:
    profiles: N well profiles (lists of floats).
    compounds: N compound ids.
    plates: N plate ids.
    perturbation_types: N of "trt", "negcon", "poscon", "unknown"; "negcon" rows are the controls.
    pipeline: normalisation steps fitted on the controls (default "mad_robustize,sphering"; "" for raw).
    null_size: permutation null size (default 10000).
    threshold: significance level (default 0.05).
    seed: seed of the null (default 0).
Returns:
    flat dict: n_compounds, mean_map, fraction_retrieved, fraction_retrieved_ci_low, ...
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CloomeJumpActivity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "profiles": datasets.Sequence(datasets.Value("float32")),
                "compounds": datasets.Value("string"),
                "plates": datasets.Value("string"),
                "perturbation_types": datasets.Value("string"),
            }),
        )

    def _compute(self, profiles, compounds, plates, perturbation_types, pipeline=DEFAULT_PIPELINE, null_size=10000,
                 threshold=0.05, seed=0):
        values = np.asarray(profiles, dtype=np.float64)
        meta = pd.DataFrame({"Metadata_Plate": plates, "Metadata_InChIKey": compounds,
                             "Metadata_pert_type": perturbation_types})
        feats = pd.DataFrame(values, columns=[f"emb_{i:04d}" for i in range(values.shape[1])])
        table = normalize(pd.concat([meta, feats], axis=1), pipeline)
        result = activity_task(table, null_size=null_size, threshold=threshold, seed=seed)
        return flatten_results(result)
