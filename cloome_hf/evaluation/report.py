"""``results.json`` and a ``report.md`` laid out like the CLOOME paper's tables.

``results`` is the dict :mod:`scripts.evaluate` builds: ``{"model": str, "dataset": str, "tasks": {task: task
result}, "baselines": {name: {"tasks": {...}}}}`` where each task result is what the matching function of this
package returns (:func:`retrieval_metrics`, :func:`zeroshot_classification`, :func:`linear_probe`,
:func:`replicate_map`, :func:`jump_tasks`). Each task's table is the ``section`` of its entry in the registry
(:mod:`.tasks`); the renderers live in :mod:`.report_sections`.
"""

from __future__ import annotations

from pathlib import Path

from ..safe_io import atomic_write_json, atomic_write_text
from .tasks import EVALUATION_TASKS

__all__ = ["write_results_json", "render_report", "write_report", "flatten_results"]

def write_results_json(results: dict, path) -> Path:
    """Write ``results`` as strict JSON (NaN becomes null) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, results)
    return path


def render_report(results: dict) -> str:
    """Markdown text of the report (see module docstring for the shape of ``results``)."""
    from .training_overlap import overlap_line

    overlap = results.get("training_overlap")
    lines = [
        *([f"**{overlap_line(overlap)}**", ""] if overlap and overlap.get("on_training_data") else []),
        "# CLOOME evaluation report",
        "",
        f"- model: `{results.get('model', '?')}`",
        f"- dataset: `{results.get('dataset', '?')}`",
        f"- sites: {results.get('n_sites', '?')}, molecules: {results.get('n_molecules', '?')}",
        *([f"- {overlap_line(overlap)}"] if overlap else []),
        "",
    ]
    for task in EVALUATION_TASKS.values():  # registry order is report order
        lines += task.section(results)
    skipped = [(name, task, why) for name, base in results.get("baselines", {}).items()
               for task, why in base.get("skipped", {}).items()]
    if skipped:
        lines += ["## Baseline tasks not run", ""] + [f"- {name}, {task}: {why}" for name, task, why in skipped] + [""]
    figures = results.get("figures", {})
    if figures:
        lines += ["## Figures", ""] + [f"![{name}]({path})" for name, path in figures.items()] + [""]
    return "\n".join(lines)


def write_report(results: dict, output_dir) -> tuple[Path, Path]:
    """Write ``results.json`` and ``report.md`` into ``output_dir``; returns both paths."""
    output_dir = Path(output_dir)
    json_path = write_results_json(results, output_dir / "results.json")
    md_path = output_dir / "report.md"
    atomic_write_text(md_path, render_report(results) + "\n")
    return json_path, md_path


def flatten_results(result: dict, prefix: str = "", sep: str = "_") -> dict[str, float]:
    """Scalars of a nested task result as one flat dict (``image_to_molecule_top1``, ``..._top1_ci_low``).

    The value of a proportion entry keeps the entry's own name (``top1`` rather than ``top1_value``); lists
    (``per_task``, ``per_molecule``) and strings are left out, so the output suits ``evaluate`` and Trainer
    logging.
    """
    out: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            if "value" in value and "ci_low" in value:
                out[name] = float(value["value"])
                out[f"{name}{sep}ci_low"] = float(value["ci_low"])
                out[f"{name}{sep}ci_high"] = float(value["ci_high"])
            else:
                out.update(flatten_results(value, name, sep))
        elif isinstance(value, (bool, int, float)) or hasattr(value, "item"):
            out[name] = float(value)
    return out
