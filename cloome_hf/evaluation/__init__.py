"""Evaluation suite of the CLOOME paper: retrieval, zero-shot classification, linear probing, replicate mAP; and
the JUMP consortium's phenotypic activity and consistency (:mod:`.jump`).

The plain functions are the primary API; each task is also an ``evaluate`` module shipped in
``cloome_hf/evaluation/metrics/`` and loadable offline with ``evaluate.load(metric_path(name))``.
"""

from pathlib import Path

from .figures import plot_embedding_tsne, plot_retrieval_gallery
from .jump import JUMP_TASKS, FeatureBaseline, jump_activity, jump_consistency, jump_profiles, jump_tasks
from .figures import plot_map_vs_pvalue
from .report_sections import jump_report_sections
from .linear_probe import (
    DEFAULT_C_GRID,
    ActivityLabels,
    aggregate_by_molecule,
    linear_probe,
    load_activity_matrix,
    molecule_split,
)
from .replicate_map import replicate_map
from .report import flatten_results, render_report, write_report, write_results_json
from .runner import TASKS, moa_labels, run_tasks
from .tasks import EVALUATION_TASKS, EvaluationTask, get_task, register_task, task_names
from .retrieval import (
    metrics_from_ranks,
    retrieval_accuracy,
    retrieval_metrics,
    retrieval_ranks,
    retrieval_ranks_one_in_n,
    top_k_candidates,
)
from .stats import clopper_pearson, proportion_with_ci, random_retrieval_baseline, random_topk_accuracy, top_percent_k
from .zeroshot import select_prototypes, zeroshot_classification, zeroshot_query_mask

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
METRIC_NAMES = ("cloome_retrieval", "cloome_zeroshot", "cloome_linear_probe", "cloome_replicate_map",
                "cloome_jump_activity", "cloome_jump_consistency")


def metric_path(name: str) -> str:
    """Path of the shipped ``evaluate`` module ``name`` (one of :data:`METRIC_NAMES`), for ``evaluate.load``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown CLOOME metric {name!r}; choose one of {', '.join(METRIC_NAMES)}")
    return str(METRICS_DIR / name / f"{name}.py")


__all__ = [
    "DEFAULT_C_GRID",
    "EVALUATION_TASKS",
    "EvaluationTask",
    "JUMP_TASKS",
    "METRIC_NAMES",
    "TASKS",
    "ActivityLabels",
    "FeatureBaseline",
    "aggregate_by_molecule",
    "clopper_pearson",
    "flatten_results",
    "jump_activity",
    "jump_consistency",
    "jump_profiles",
    "jump_report_sections",
    "jump_tasks",
    "linear_probe",
    "load_activity_matrix",
    "metric_path",
    "metrics_from_ranks",
    "moa_labels",
    "plot_map_vs_pvalue",
    "register_task",
    "get_task",
    "task_names",
    "plot_embedding_tsne",
    "plot_retrieval_gallery",
    "proportion_with_ci",
    "random_retrieval_baseline",
    "random_topk_accuracy",
    "render_report",
    "replicate_map",
    "retrieval_accuracy",
    "retrieval_metrics",
    "retrieval_ranks",
    "retrieval_ranks_one_in_n",
    "run_tasks",
    "select_prototypes",
    "molecule_split",
    "top_k_candidates",
    "top_percent_k",
    "write_report",
    "write_results_json",
    "zeroshot_classification",
    "zeroshot_query_mask",
]
