"""`evaluate` module: CLOOME zero-shot image-to-image classification (paper Tables 3 and 4).

Load offline with ``evaluate.load(cloome_hf.evaluation.metric_path("cloome_zeroshot"))``. It wraps
:func:`cloome_hf.evaluation.zeroshot_classification` and returns its result flattened to scalars.
"""

import datasets
import evaluate

from cloome_hf.evaluation.report import flatten_results
from cloome_hf.evaluation.zeroshot import zeroshot_classification

_DESCRIPTION = """One seeded random prototype image per class (molecule or mechanism of action); sites sharing
molecule and plate with a prototype are removed from the queries; each query is classified by cosine similarity to
the prototypes. Top-k accuracy with Clopper-Pearson intervals and the random baseline k / n_classes."""

_KWARGS_DESCRIPTION = """
Args:
    embeds: N image embeddings (lists of floats).
    labels: N class labels (molecule id or MoA; empty string = unlabelled, ignored).
    molecules: N molecule ids.
    plates: N plate ids.
    ks: top-k cut-offs, default (1, 5, 10).
    seed: seed of the prototype draw.
Returns:
    flat dict: n_classes, n_queries, n_removed, top1, top1_ci_low, top1_ci_high, ..., mean_rank, random_top1, ...
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CloomeZeroshot(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "embeds": datasets.Sequence(datasets.Value("float32")),
                    "labels": datasets.Value("string"),
                    "molecules": datasets.Value("string"),
                    "plates": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, embeds, labels, molecules, plates, ks=(1, 5, 10), seed=0):
        result = zeroshot_classification(embeds, labels, molecules, plates, ks=ks, seed=seed)
        return flatten_results(result)
