"""`evaluate` module: CLOOME linear probing for activity prediction (paper Table 2).

Load offline with ``evaluate.load(cloome_hf.evaluation.metric_path("cloome_linear_probe"))``. It wraps
:func:`cloome_hf.evaluation.linear_probe` and returns its summary flattened to scalars.
"""

import datasets
import evaluate
import numpy as np

from cloome_hf.evaluation.linear_probe import DEFAULT_C_GRID, linear_probe
from cloome_hf.evaluation.report import flatten_results

_DESCRIPTION = """Per-task L2 logistic regression on fixed molecule-level features: C chosen from 1e-6..1e6 by
validation ROC-AUC, refitted on train+val, test ROC-AUC and F1; mean/std over tasks and counts of tasks with
AUC > 0.9 / 0.8 / 0.7."""

_KWARGS_DESCRIPTION = """
Args:
    features: M molecule feature vectors (lists of floats).
    labels: M label rows, one entry per task: +1 active, -1 inactive, 0 unknown.
    split: M split names, "train" / "validation" / "test" (split by molecule).
    Cs: inverse regularisation grid, default 1e-6 ... 1e6.
    n_jobs: joblib workers over tasks.
Returns:
    flat dict: n_tasks, n_tasks_evaluated, auc_mean, auc_std, f1_mean, f1_std, auc_above_0.9_count, ...
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CloomeLinearProbe(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "features": datasets.Sequence(datasets.Value("float32")),
                    "labels": datasets.Sequence(datasets.Value("int8")),
                    "split": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, features, labels, split, Cs=DEFAULT_C_GRID, n_jobs=1, seed=0):
        result = linear_probe(
            np.asarray(features), np.asarray(labels), split, Cs=Cs, n_jobs=n_jobs, seed=seed, show_progress=False
        )
        return flatten_results(result)
