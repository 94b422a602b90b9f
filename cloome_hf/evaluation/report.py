"""``results.json`` and a ``report.md`` laid out like the CLOOME paper's tables.

``results`` is the dict :mod:`scripts.evaluate` builds: ``{"model": str, "dataset": str, "tasks": {task: task
result}, "baselines": {name: {"tasks": {...}}}}`` where each task result is what the matching function of this
package returns (:func:`retrieval_metrics`, :func:`zeroshot_classification`, :func:`linear_probe`,
:func:`replicate_map`). Method rows per table: this model, the random baseline, then any feature baselines.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..safe_io import atomic_write_json, atomic_write_text
from .jump_report import jump_report_sections

__all__ = ["write_results_json", "render_report", "write_report", "flatten_results"]

DIRECTIONS = (("image_to_molecule", "Structure retrieval"), ("molecule_to_image", "Image retrieval"))


def write_results_json(results: dict, path) -> Path:
    """Write ``results`` as strict JSON (NaN becomes null) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, results)
    return path


def _pct(entry) -> str:
    """'12.3 [10.1, 14.8]' from a proportion entry (percent with Clopper–Pearson interval)."""
    if entry is None:
        return "–"
    if isinstance(entry, (int, float)):
        return f"{100 * entry:.1f}"
    return f"{100 * entry['value']:.1f} [{100 * entry['ci_low']:.1f}, {100 * entry['ci_high']:.1f}]"


def _num(x, fmt="{:.1f}") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _methods(results: dict, task: str):
    """(name, task result) for this model and each baseline that ran ``task``."""
    out = []
    if task in results.get("tasks", {}):
        out.append((results.get("model_name", "CLOOME (this model)"), results["tasks"][task]))
    for name, base in results.get("baselines", {}).items():
        if task in base.get("tasks", {}):
            out.append((name, base["tasks"][task]))
    return out


def _retrieval_section(results: dict) -> list[str]:
    methods = _methods(results, "retrieval")
    if not methods:
        return []
    ks = [k for k in ("top1", "top5", "top10") if k in methods[0][1]["image_to_molecule"]]
    lines = [
        "## Cross-modal retrieval (Table 1)",
        "",
        f"N = {methods[0][1]['n']} matched pairs; accuracies in % with exact 95 % Clopper–Pearson intervals; "
        "ties broken pessimistically.",
        "",
    ]
    header = ["Task", "Method", *[k.replace("top", "Top-") for k in ks], "Top-1 %", "Mean rank", "Median rank"]
    rows = []
    for direction, title in DIRECTIONS:
        for name, res in methods:
            d = res[direction]
            rows.append(
                [title, name, *[_pct(d[k]) for k in ks], _pct(d.get("top1pct_recall")),
                 _num(d["mean_rank"]), _num(d["median_rank"])]
            )
        r = methods[0][1][direction]["random"]
        rows.append(
            [title, "Random", *[_pct(r[k]) for k in ks], _pct(r.get("top1pct_recall")),
             _num(r["mean_rank"]), _num(r["median_rank"])]
        )
    lines += _table(header, rows) + [""]
    variant_key = next((k for k in methods[0][1] if k.startswith("one_in_")), None)
    if variant_key:
        n_cand = methods[0][1][variant_key]["n_candidates"]
        lines += [f"### 1 in {n_cand} (true match plus {n_cand - 1} random non-matches)", ""]
        rows = []
        for direction, title in DIRECTIONS:
            for name, res in methods:
                if variant_key in res:
                    d = res[variant_key][direction]
                    rows.append([title, name, *[_pct(d[k]) for k in ks], _num(d["mean_rank"])])
            r = methods[0][1][variant_key][direction]["random"]
            rows.append([title, "Random", *[_pct(r[k]) for k in ks], _num(r["mean_rank"])])
        lines += _table(["Task", "Method", *[k.replace("top", "Top-") for k in ks], "Mean rank"], rows) + [""]
    return lines


def _linear_probe_section(results: dict) -> list[str]:
    methods = _methods(results, "linear_probe")
    if not methods:
        return []
    lines = ["## Activity prediction by linear probing (Table 2)", ""]
    header = ["Method", "Tasks", "ROC-AUC", "F1", "# AUC > 0.9", "# AUC > 0.8", "# AUC > 0.7"]
    rows = []
    for name, res in methods:
        above = [str(res["auc_above"][t]["count"]) for t in ("0.9", "0.8", "0.7")]
        rows.append(
            [name, str(res["n_tasks_evaluated"]),
             f"{_num(res['auc']['mean'], '{:.3f}')} ± {_num(res['auc']['std'], '{:.3f}')}",
             f"{_num(res['f1']['mean'], '{:.3f}')} ± {_num(res['f1']['std'], '{:.3f}')}", *above]
        )
    rows.append(["Random", "–", "0.500", "–", "0", "0", "0"])
    return lines + _table(header, rows) + [""]


def _zeroshot_section(results: dict, task: str, title: str) -> list[str]:
    methods = _methods(results, task)
    if not methods:
        return []
    first = methods[0][1]
    ks = [k for k in ("top1", "top5", "top10") if k in first]
    lines = [
        f"## {title}",
        "",
        f"{first['n_classes']} classes, {first['n_queries']} query sites ({first['n_removed']} removed because they "
        "share molecule and plate with a prototype); accuracies in % with 95 % Clopper–Pearson intervals.",
        "",
    ]
    rows = []
    for name, res in methods:
        rows.append([name, str(res["n_classes"]), str(res["n_queries"]), *[_pct(res[k]) for k in ks]])
        rows.append([f"Random ({res['n_classes']} classes)", str(res["n_classes"]), "–",
                     *[_pct(res["random"][k]) for k in ks]])
    return lines + _table(["Method", "Classes", "Queries", *[k.replace("top", "Top-") for k in ks]], rows) + [""]


def _map_section(results: dict) -> list[str]:
    methods = _methods(results, "map")
    if not methods:
        return []
    lines = ["## Replicate mean average precision (copairs)", ""]
    rows = [
        [name, res["mode"], str(res["n_molecules"]), _num(res["mean_map"], "{:.3f}"), _pct(res["fraction_retrieved"])]
        for name, res in methods
    ]
    header = ["Method", "Mode", "Molecules", "mAP", f"% retrieved (corrected p < {methods[0][1]['threshold']})"]
    return lines + _table(header, rows) + [""]


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
    lines += _retrieval_section(results)
    lines += _linear_probe_section(results)
    lines += _zeroshot_section(results, "zeroshot_molecule", "Zero-shot molecule classification (Table 3)")
    lines += _zeroshot_section(results, "zeroshot_moa", "Zero-shot mechanism-of-action classification (Table 4)")
    lines += _map_section(results)
    lines += jump_report_sections(results)
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
