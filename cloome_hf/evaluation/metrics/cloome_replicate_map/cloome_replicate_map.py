"""`evaluate` module: replicate mAP with copairs.

Load offline with ``evaluate.load(cloome_hf.evaluation.metric_path("cloome_replicate_map"))``. It wraps
:func:`cloome_hf.evaluation.replicate_map` and returns its summary flattened to scalars.
"""

import datasets
import evaluate

from cloome_hf.evaluation.replicate_map import replicate_map
from cloome_hf.evaluation.report import flatten_results

_DESCRIPTION = """Mean average precision of retrieving a molecule's replicate sites (cosine similarity) against other
molecules, with copairs permutation p-values; reports mean mAP and the fraction of molecules with BH-corrected p
below the threshold (Clopper-Pearson interval). Phenotypic activity against controls is cloome_jump_activity."""

_KWARGS_DESCRIPTION = """
Args:
    embeds: N embeddings (lists of floats).
    molecules: N molecule ids.
    null_size: permutation null size (default 10000).
    threshold: significance level (default 0.05).
    seed: seed of the null.
Returns:
    flat dict: n_molecules, mean_map, fraction_retrieved, fraction_retrieved_ci_low, ...
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CloomeReplicateMap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"embeds": datasets.Sequence(datasets.Value("float32")), "molecules": datasets.Value("string")}
            ),
        )

    def _compute(self, embeds, molecules, null_size=10000, threshold=0.05, seed=0):
        result = replicate_map(embeds, molecules, null_size=null_size, threshold=threshold, seed=seed)
        return flatten_results(result)
