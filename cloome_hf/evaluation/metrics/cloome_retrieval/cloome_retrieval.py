"""`evaluate` module: CLOOME cross-modal retrieval (paper Table 1).

Load offline with ``evaluate.load(cloome_hf.evaluation.metric_path("cloome_retrieval"))``. It wraps
:func:`cloome_hf.evaluation.retrieval_metrics` and returns its result flattened to scalars.
"""

import datasets
import evaluate

from cloome_hf.evaluation.report import flatten_results
from cloome_hf.evaluation.retrieval import retrieval_metrics

_DESCRIPTION = """Top-k accuracy (with Clopper-Pearson intervals), top-1 % recall and mean/median rank of the true
partner for N matched image/molecule embedding pairs, in both directions (image_to_molecule = structure retrieval,
molecule_to_image = image retrieval), plus the "1 in 100" variant. Ties are broken pessimistically."""

_KWARGS_DESCRIPTION = """
Args:
    image_embeds: N image embeddings (lists of floats), row i matches molecule_embeds[i].
    molecule_embeds: N molecule embeddings.
    ks: top-k cut-offs, default (1, 5, 10).
    groups: optional N molecule ids; candidates of the query's own molecule are not competitors.
    one_in_n: candidate-set size of the sub-sampled variant (default 100; None to skip).
    seed: seed of the non-match sampling.
Returns:
    flat dict, e.g. image_to_molecule_top1, image_to_molecule_top1_ci_low, molecule_to_image_mean_rank,
    one_in_100_image_to_molecule_top1, ...
"""

_CITATION = """@article{sanchez2023cloome, title={CLOOME: contrastive learning unlocks bioimaging databases for queries
with chemical structures}, author={Sanchez-Fernandez, Ana and Rumetshofer, Elisabeth and Hochreiter, Sepp and
Klambauer, G{\\"u}nter}, journal={Nature Communications}, volume={14}, pages={7339}, year={2023}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CloomeRetrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "image_embeds": datasets.Sequence(datasets.Value("float32")),
                    "molecule_embeds": datasets.Sequence(datasets.Value("float32")),
                }
            ),
        )

    def _compute(self, image_embeds, molecule_embeds, ks=(1, 5, 10), groups=None, one_in_n=100, seed=0):
        result = retrieval_metrics(image_embeds, molecule_embeds, ks=ks, groups=groups, one_in_n=one_in_n, seed=seed)
        return flatten_results(result)
