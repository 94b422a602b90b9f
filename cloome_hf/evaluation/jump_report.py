"""Report tables and the mAP-vs-significance figure of the JUMP tasks (:mod:`.jump`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure state, works headless

__all__ = ["jump_report_sections", "plot_map_vs_pvalue"]

_TITLES = {"jump_activity": "JUMP phenotypic activity (copairs mAP against the plates' negative controls)",
           "jump_consistency": "JUMP phenotypic consistency (copairs multi-label mAP of shared annotations)"}


def plot_map_vs_pvalue(results: dict, path, task: str, *, dpi: int = 100) -> Path:
    """One panel per method: mAP (y) against -log10 corrected p (x), coloured by retrieved, the significance
    threshold dashed, as the JUMP papers draw it. ``results``: method name -> task result of :mod:`.jump`."""
    rows_key = "per_compound" if task == "jump_activity" else "per_label"
    fig = Figure(figsize=(4.2 * len(results), 4), dpi=dpi)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (name, res) in zip(axes, results.items()):
        rows = res[rows_key]
        x = np.array([-math.log10(max(r["corrected_p_value"], 1e-300)) for r in rows])
        y = np.array([r["map"] for r in rows])
        hit = np.array([r["retrieved"] for r in rows], dtype=bool)
        ax.scatter(x[~hit], y[~hit], s=12, c="#9e9e9e", label="not retrieved")
        ax.scatter(x[hit], y[hit], s=12, c="#d62728", label="retrieved")
        ax.axvline(-math.log10(res["threshold"]), color="k", ls="--", lw=0.8)
        frac = res["fraction_retrieved"]["value"]
        ax.set(title=f"{name}\n{100 * frac:.1f}% retrieved, mAP {res['mean_map']:.3f}",
               xlabel="-log10(corrected p-value)", ylabel="mAP", ylim=(-0.02, 1.02))
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def jump_report_sections(results: dict) -> list[str]:
    """Markdown lines of the JUMP tables (empty when neither task ran), for :func:`.report.render_report`."""
    from .report import _methods, _pct

    lines: list[str] = []
    for task, title in _TITLES.items():
        methods = _methods(results, task)
        if not methods:
            continue
        first = methods[0][1]
        unit = "Compounds" if task == "jump_activity" else "Labels"
        lines += [f"## {title}", "",
                  f"Null size {first['null_size']}; % retrieved = Benjamini-Hochberg corrected p < "
                  f"{first['threshold']}, with 95 % Clopper-Pearson intervals; profiles normalised against the "
                  "controls.", ""]
        header = ["Method", "Pipeline", "Controls", unit, "mAP", "% retrieved"]
        if task == "jump_consistency":
            header.insert(4, "Annotated compounds")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, res in methods:
            count = res["n_compounds"] if task == "jump_activity" else res["n_labels"]
            row = [name, ",".join(res["pipeline"]) or "raw", f"`{res['controls']}`", str(count),
                   f"{res['mean_map']:.3f}", _pct(res["fraction_retrieved"])]
            if task == "jump_consistency":
                row.insert(4, str(res["n_compounds"]))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines
