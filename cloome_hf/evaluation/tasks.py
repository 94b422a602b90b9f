"""The evaluation task registry: each task name -> how to run it, what it needs, its report table, its console
headline and its figures.

Like the loss and recipe registries, this is the one list the runner (:func:`.runner.run_tasks`), the JUMP
protocol (:func:`.jump.jump_tasks`), the report (:func:`.report.render_report`) and ``cloome evaluate`` read.
Registration order is the order of the report's tables.

Two protocols share the registry: ``"paper"`` tasks run on site embeddings (:class:`TaskInputs`), ``"jump"``
tasks on normalised well profiles, all JUMP tasks of one call together (:func:`.jump.jump_tasks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np

from .report_sections import jump_section, linear_probe_section, map_section, retrieval_section, zeroshot_section

__all__ = ["EVALUATION_TASKS", "EvaluationTask", "TaskInputs", "get_task", "register_task", "task_names"]


@dataclass
class TaskInputs:
    """What a ``"paper"`` task may read: site embeddings and their labels, plus the run's options."""

    image: Any
    keys: np.ndarray
    plates: np.ndarray
    molecule: Any = None
    molecule_index: Any = None
    moa: Any = None
    activity: Any = None
    seed: int = 0
    linear_probe_Cs: Any = None
    n_jobs: int = 1
    map_null_size: int = 10000
    show_progress: bool = True


@dataclass(frozen=True)
class EvaluationTask:
    """One evaluation task.

    Attributes:
        name: the ``--tasks`` name and the key of its result.
        protocol: ``"paper"`` (run by :func:`.runner.run_tasks`) or ``"jump"`` (:func:`.jump.jump_tasks`).
        run: ``run(inputs: TaskInputs) -> dict`` for ``"paper"`` tasks; ``None`` for ``"jump"`` tasks.
        requires: inputs that must be given (``"molecule"``, ``"moa"``, ``"activity"``, ``"annotations"``).
        missing: the error message when one of them is missing.
        section: ``section(results) -> list[str]``, the task's Markdown table in ``report.md``.
        headline: ``headline(result) -> [(label, metric, value, ci_low, ci_high, n)]``, the console summary.
        figures: file names of the figures the task draws into the output folder.
    """

    name: str
    protocol: str
    section: Callable[[dict], list[str]]
    headline: Callable[[dict], list[tuple]]
    run: Callable[[TaskInputs], dict] | None = None
    requires: tuple[str, ...] = ()
    missing: str = ""
    figures: tuple[str, ...] = field(default_factory=tuple)


EVALUATION_TASKS: dict[str, EvaluationTask] = {}


def register_task(task: EvaluationTask) -> EvaluationTask:
    if task.protocol not in ("paper", "jump"):
        raise ValueError(f"task {task.name!r}: protocol must be 'paper' or 'jump', not {task.protocol!r}")
    if task.name in EVALUATION_TASKS:
        raise ValueError(f"evaluation task {task.name!r} is already registered")
    EVALUATION_TASKS[task.name] = task
    return task


def task_names(protocol: str | None = None) -> tuple[str, ...]:
    """Registered task names (of one ``protocol`` if given), in registration order."""
    return tuple(n for n, t in EVALUATION_TASKS.items() if protocol is None or t.protocol == protocol)


def get_task(name: str) -> EvaluationTask:
    if name not in EVALUATION_TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(EVALUATION_TASKS)}")
    return EVALUATION_TASKS[name]


# --- run functions of the paper's tasks -------------------------------------------------------------------------

def _run_retrieval(x: TaskInputs) -> dict:
    from ..data.splits import one_site_per_molecule
    from .retrieval import retrieval_metrics

    sub = one_site_per_molecule(x.keys, x.seed)
    res = retrieval_metrics(x.image[sub], x.molecule[x.molecule_index[sub]], seed=x.seed,
                            show_progress=x.show_progress)
    res["sites"] = "one seeded random site per molecule"
    return res


def _run_zeroshot(x: TaskInputs, *, by_moa: bool) -> dict:
    from .zeroshot import zeroshot_classification

    return zeroshot_classification(x.image, x.moa if by_moa else x.keys, x.keys, x.plates, seed=x.seed)


def _run_linear_probe(x: TaskInputs) -> dict:
    from .runner import probe_activity

    if x.activity.inchikeys is None:
        raise ValueError(EVALUATION_TASKS["linear_probe"].missing)
    return probe_activity(x.image, x.keys, x.activity, x.seed, x.linear_probe_Cs, x.n_jobs, x.show_progress)


def _run_map(x: TaskInputs) -> dict:
    from .replicate_map import replicate_map

    return replicate_map(x.image, x.keys, null_size=x.map_null_size, seed=x.seed, show_progress=x.show_progress)


# --- console headlines ------------------------------------------------------------------------------------------

def _retrieval_headline(res: dict) -> list[tuple]:
    rows = []
    for direction in ("image_to_molecule", "molecule_to_image"):
        for k in ("top1", "top10"):
            e = res[direction][k]
            rows.append((f"retrieval {direction.replace('_', ' ')}", f"{k} accuracy", e["value"], e["ci_low"],
                         e["ci_high"], e.get("n", res.get("n"))))
    return rows


def _zeroshot_headline(res: dict, *, name: str) -> list[tuple]:
    e = res["top1"]
    return [(name, "top1 accuracy", e["value"], e["ci_low"], e["ci_high"], res.get("n_queries"))]


def _linear_probe_headline(res: dict) -> list[tuple]:
    return [("linear_probe", "mean ROC-AUC", res["auc"]["mean"], None, None, res.get("n_tasks_evaluated"))]


def _map_headline(res: dict, *, name: str) -> list[tuple]:
    return [(name, "mean mAP", res["mean_map"], None, None, res.get("n_molecules"))] if "mean_map" in res else []


# --- the registry, in report order ------------------------------------------------------------------------------

register_task(EvaluationTask(
    "retrieval", "paper", retrieval_section, _retrieval_headline, _run_retrieval, requires=("molecule",),
    missing="retrieval needs molecule embeddings"))
register_task(EvaluationTask(
    "linear_probe", "paper", linear_probe_section, _linear_probe_headline, _run_linear_probe,
    requires=("activity",), missing="linear_probe needs an activity label matrix with its row InChIKey index"))
register_task(EvaluationTask(
    "zeroshot_molecule", "paper",
    partial(zeroshot_section, task="zeroshot_molecule", title="Zero-shot molecule classification (Table 3)"),
    partial(_zeroshot_headline, name="zeroshot_molecule"), partial(_run_zeroshot, by_moa=False)))
register_task(EvaluationTask(
    "zeroshot_moa", "paper",
    partial(zeroshot_section, task="zeroshot_moa", title="Zero-shot mechanism-of-action classification (Table 4)"),
    partial(_zeroshot_headline, name="zeroshot_moa"), partial(_run_zeroshot, by_moa=True), requires=("moa",),
    missing="zeroshot_moa needs MoA labels (--moa_column or --moa_annotations)"))
register_task(EvaluationTask(
    "map", "paper", map_section, partial(_map_headline, name="map"), _run_map))
register_task(EvaluationTask(
    "jump_activity", "jump", partial(jump_section, task="jump_activity"),
    partial(_map_headline, name="jump_activity"), figures=("jump_activity.png",)))
register_task(EvaluationTask(
    "jump_consistency", "jump", partial(jump_section, task="jump_consistency"),
    partial(_map_headline, name="jump_consistency"), requires=("annotations",),
    missing="jump_consistency needs --annotations", figures=("jump_consistency.png",)))
